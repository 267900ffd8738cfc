"""The ``kr`` command: run | plugins | config check | cleanup | state | apiserver | lab | version.

Exit status: 0 success, 1 failure at run time, 2 a configuration or selection error (the message names the
key path or the plugins involved).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from kr_core import __version__
from kr_core.config import ConfigError, ConfigFile, Settings, load_config_file, merge, parse_config
from kr_core.flags import BOOL, FLAGS, INTLIST, LIST, Flag, parse_value
from kr_core.plugins import Choice, Discovered, SelectionError, discover, implemented_hooks, select

log = logging.getLogger("kr")


# ----------------------------------------------------------------------------------------------- flags


def add_kube_router_flags(p: argparse.ArgumentParser) -> None:
    """Every kube-router flag, same name; values stay raw strings here and are parsed in :func:`cli_flags`."""
    groups: dict[str, Any] = {}
    for f in FLAGS:
        g = groups.get(f.group)
        if g is None:
            g = groups[f.group] = p.add_argument_group(f"kube-router flags ({f.group})")
        names = [f"--{f.name}"] + ([f"-{f.short}"] if f.short else [])
        if f.kind == BOOL:
            g.add_argument(*names, dest=f.attr, nargs="?", const="true", default=None, metavar="BOOL",
                           help=f"{f.help} (default {str(f.default).lower()})")
        elif f.kind in (LIST, INTLIST):
            g.add_argument(*names, dest=f.attr, action="append", default=None, metavar="LIST",
                           help=f"{f.help} (default {f.default})")
        else:
            g.add_argument(*names, dest=f.attr, default=None, metavar=f.kind.upper(),
                           help=f"{f.help} (default {f.default!r})")


def cli_flags(ns: argparse.Namespace) -> dict[str, Any]:
    """The flags given on the command line, parsed (unset flags are absent)."""
    out: dict[str, Any] = {}
    for f in FLAGS:
        raw = getattr(ns, f.attr, None)
        if raw is None:
            continue
        try:
            out[f.name] = parse_value(f, raw)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"--{f.name}", str(e)) from None
    return out


def _load(ns: argparse.Namespace, installed: list[Discovered]) -> tuple[Settings, ConfigFile]:
    names = {d.name for d in installed}
    cfg = load_config_file(ns.config, names) if getattr(ns, "config", None) else parse_config({}, names)
    settings = merge(cfg.flags, cli_flags(ns))
    return settings, cfg


def _enabled(choices: list[Choice]) -> list[Discovered]:
    return [c.plugin for c in choices if c.enabled]


def _setup_logging(settings: Settings | None, verbose: str | None = None) -> None:
    level_s = verbose if verbose is not None else (settings.v if settings is not None else "0")
    try:
        lvl = int(level_s)
    except ValueError:
        lvl = 0
    logging.basicConfig(
        level=logging.DEBUG if lvl >= 2 else logging.INFO,
        format="%(asctime)s %(levelname).1s %(name)s: %(message)s",
        stream=sys.stderr,
    )


# ----------------------------------------------------------------------------------------------- commands


def cmd_plugins(ns: argparse.Namespace) -> int:
    installed = discover()
    settings, cfg = _load(ns, installed)
    choices = select(installed, cfg.selection, settings)
    rows = []
    for c in choices:
        info = c.plugin.info
        status = ("enabled" if c.enabled else "disabled") + f": {c.reason}"
        if info is not None and not info.implemented:
            status += " (skeleton: does nothing yet)"
        rows.append({
            "name": c.plugin.name,
            "distribution": c.plugin.distribution,
            "version": c.plugin.dist_version or (info.version if info else ""),
            "role": info.role if info else "?",
            "enabled": c.enabled,
            "status": status,
            "implemented": info.implemented if info else False,
            "hooks": list(implemented_hooks(c.plugin.cls)) if c.plugin.cls is not None else [],
            "resources": sorted(r.value for r in info.resources) if info else [],
            "error": c.plugin.error,
        })
    if ns.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ("NAME", "DISTRIBUTION", "VERSION", "ROLE", "STATUS", "HOOKS")
    table = [header] + [
        (r["name"], r["distribution"], r["version"], r["role"], r["status"], ",".join(r["hooks"]) or "-")
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header) - 1)]
    for row in table:
        print("  ".join(str(v).ljust(w) for v, w in zip(row[:-1], widths, strict=False)) + "  " + str(row[-1]))
    return 0


def cmd_config_check(ns: argparse.Namespace) -> int:
    from kr_core.plugins import validate_plugin_config

    installed = discover()
    ns.config = ns.file
    settings, cfg = _load(ns, installed)
    choices = select(installed, cfg.selection, settings)
    by_name = {d.name: d for d in installed}
    for name, section in cfg.sections.items():
        d = by_name[name]
        if d.info is not None:
            validate_plugin_config(d.info, section)
    enabled = [c.plugin.name for c in choices if c.enabled]
    print(f"{ns.file}: OK; plugins enabled: {', '.join(enabled) or 'none'}")
    return 0


def _make_source(settings: Settings, registry: Any) -> Any:
    """Informers on the API server named by --kubeconfig / --master / in-cluster config (kube-router's rules)."""
    from kr_core.watch.informer import InformerSource
    from kr_core.watch.kubeconfig import load_api_client

    return InformerSource(load_api_client(settings.kubeconfig, settings.master), metrics=registry)


def cmd_run(ns: argparse.Namespace) -> int:
    from kr_core.agent import Agent, AgentError

    installed = discover()
    settings, cfg = _load(ns, installed)
    _setup_logging(settings)
    if settings.cleanup_config:
        return cmd_cleanup(ns)
    if os.geteuid() != 0:
        print("kr: error: kr run must run as root (it programs the kernel)", file=sys.stderr)
        return 1
    choices = select(installed, cfg.selection, settings)
    plugins = _enabled(choices)
    if not plugins:
        log.info("no plugin enabled (see `kr plugins`); nothing to do")
        return 0
    from kr_core.watch.kubeconfig import KubeConfigError

    agent = Agent(settings, plugins, cfg.sections, None, state_dir=ns.state_dir)
    agent.configure()
    try:
        agent.source = _make_source(settings, agent.metrics.registry)
        return agent.run()
    except (AgentError, KubeConfigError) as e:
        print(f"kr: error: {e}", file=sys.stderr)
        return 1


def cmd_cleanup(ns: argparse.Namespace) -> int:
    from kr_core.agent import Agent

    installed = discover()
    settings, cfg = _load(ns, installed)
    _setup_logging(settings)
    if getattr(ns, "all_installed", False):
        # every plugin that loads, whatever the selection (e.g. the other network-policy backend's leftovers)
        plugins = [d for d in installed if d.loaded]
    else:
        plugins = _enabled(select(installed, cfg.selection, settings))
    agent = Agent(settings, plugins, cfg.sections, None, state_dir=ns.state_dir, serve_http=False,
                  separate_registries=True)
    failed = agent.cleanup()
    for f in failed:
        print(f"kr: cleanup failed: {f}", file=sys.stderr)
    return 1 if failed else 0


def cmd_state(ns: argparse.Namespace) -> int:
    import urllib.error
    import urllib.request

    url = f"http://{ns.addr}/state"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            data = json.load(r)
    except (urllib.error.URLError, OSError) as e:
        print(f"kr: error: cannot reach the agent at {url}: {e} (is `kr run` running with --health-port?)",
              file=sys.stderr)
        return 1
    if ns.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"node {data.get('node', '?')}")
    for name, p in data.get("plugins", {}).items():
        age = p.get("last_sync_age")
        print(f"\n== {name} ({p['role']}) syncs={p['syncs']} events={p['events']} queue={p['queue_depth']} "
              f"last sync {'never' if age is None else f'{age:.1f}s ago'}")
        st = p.get("state") or {}
        if "error" in p:
            print(f"   state unavailable: {p['error']}")
        for k, v in (st.get("summary") or {}).items():
            print(f"   {k}: {v}")
        for item in st.get("items") or []:
            print("   " + "  ".join(f"{k}={v}" for k, v in item.items()))
    return 0


def cmd_version(ns: argparse.Namespace) -> int:
    import platform

    print(f"kr {__version__} (python {platform.python_version()})")
    return 0


def _delegate(module: str, argv: list[str]) -> int:
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        print(f"kr: error: this command is not available in this installation: {e}", file=sys.stderr)
        return 1
    return int(mod.main(argv) or 0)


# ----------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kr", description="kr: kube-router as a plugin framework")
    p.add_argument("-V", "--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def with_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", metavar="FILE", help="YAML config file (flags, plugins:, plugin sections)")
        sp.add_argument("--state-dir", default="/var/lib/kr", help="where plugins keep state (default %(default)s)")
        add_kube_router_flags(sp)

    sp = sub.add_parser("run", help="run the node agent")
    with_config(sp)
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("plugins", help="list installed plugins and whether they run")
    sp.add_argument("--json", action="store_true")
    with_config(sp)
    sp.set_defaults(func=cmd_plugins)

    sp = sub.add_parser("config", help="configuration tools")
    csub = sp.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    cp = csub.add_parser("check", help="validate a config file without starting anything")
    cp.add_argument("file")
    cp.add_argument("--state-dir", default="/var/lib/kr", help=argparse.SUPPRESS)
    add_kube_router_flags(cp)
    cp.set_defaults(func=cmd_config_check)

    sp = sub.add_parser("cleanup", help="remove everything every enabled plugin installed (--cleanup-config)")
    sp.add_argument("--all-installed", action="store_true",
                    help="clean up after every installed plugin, enabled or not (e.g. after switching backends)")
    with_config(sp)
    sp.set_defaults(func=cmd_cleanup)

    sp = sub.add_parser("state", help="what each plugin of a running agent has programmed")
    sp.add_argument("--addr", default="127.0.0.1:20244", help="the agent's health address (default %(default)s)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_state)

    sp = sub.add_parser("version", help="print the version")
    sp.set_defaults(func=cmd_version)

    sub.add_parser("apiserver", help="the embedded Kubernetes API server (kr apiserver --help)", add_help=False)
    sub.add_parser("lab", help="the network-namespace lab (kr lab up|down|status|kubectl|exec|probe|matrix|vm)",
                   add_help=False)
    sub.add_parser("demo", help="bring up a lab, show every plugin at work, tear it down", add_help=False)
    return p


DELEGATED = {"apiserver": "kr_core.embedded.cli", "demo": "kr_core.lab.demo"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        return _delegate(DELEGATED[argv[0]], argv[1:])
    if argv and argv[0] == "lab":
        # the lab's own CLI when it is there; until then only the VM runner
        try:
            import kr_core.lab.cli  # noqa: F401
        except ImportError:
            if len(argv) > 1 and argv[1] == "vm":
                return _delegate("kr_core.lab.cli_vm", argv[2:])
            print("kr lab: only `kr lab vm` is available in this installation", file=sys.stderr)
            return 2
        return _delegate("kr_core.lab.cli", argv[1:])
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.version:
        return cmd_version(ns)
    if not getattr(ns, "func", None):
        parser.print_help()
        return 2
    try:
        return int(ns.func(ns) or 0)
    except ConfigError as e:
        print(f"kr: config error: {e}", file=sys.stderr)
        return 2
    except SelectionError as e:
        print(f"kr: plugin selection error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["Flag", "main"]
