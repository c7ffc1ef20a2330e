"""Reading an Ansible inventory (any format Ansible reads) through ``ansible-inventory --list``, and assigning
each host the bundle of its device profile: the host variable ``edgedl_profile`` if set, else the inventory group
named after a bundle's profile (``[rpi5]``, ``[x86-server]`` ...)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from edgedl.errors import EdgeDLError
from edgedl.stages.fleet.ansible import environment, playbook_dir, tool


@dataclass
class Inventory:
    hosts: list[str]  # in inventory order
    groups: dict[str, list[str]]  # host -> its groups
    hostvars: dict[str, dict] = field(default_factory=dict)


def read_inventory(path: Path, pdir: Path | None = None) -> Inventory:
    path = Path(path)
    if not path.exists():
        raise EdgeDLError(f"inventory {path} does not exist; pass an Ansible inventory (INI or YAML) with --inventory")
    proc = subprocess.run([tool("ansible-inventory"), "-i", str(path), "--list"], capture_output=True, text=True,
                          env=environment(playbook_dir(pdir), 1), timeout=120)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise EdgeDLError(f"ansible-inventory could not read {path}: {last}")
    data = json.loads(proc.stdout)
    groups: dict[str, list[str]] = {}
    order: list[str] = []

    def walk(group: str, seen: tuple[str, ...] = ()) -> None:
        node = data.get(group, {})
        for host in node.get("hosts", []):
            if host not in groups:
                groups[host] = []
                order.append(host)
            for g in (*seen, group):
                if g not in ("all",) and g not in groups[host]:
                    groups[host].append(g)
        for child in node.get("children", []):
            walk(child, (*seen, group))

    walk("all")
    if not order:
        raise EdgeDLError(f"inventory {path} lists no hosts; add the devices (one per line under a [group])")
    return Inventory(hosts=order, groups=groups, hostvars=data.get("_meta", {}).get("hostvars", {}))


def assign(inventory: Inventory, profiles: list[str], limit: list[str] | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """({host: profile} for hosts that get a bundle, {host: why not} for the others)."""
    targets, skipped = {}, {}
    for host in inventory.hosts:
        if limit and host not in limit and not set(inventory.groups[host]) & set(limit):
            continue
        explicit = inventory.hostvars.get(host, {}).get("edgedl_profile")
        if explicit:
            matches = [explicit] if explicit in profiles else []
        else:
            matches = [p for p in profiles if p in inventory.groups[host]]
        if len(matches) > 1:
            raise EdgeDLError(f"host {host} is in the groups of several bundles ({', '.join(matches)}); set "
                              "edgedl_profile for it in the inventory")
        if matches:
            targets[host] = matches[0]
        else:
            skipped[host] = (f"its profile {explicit} has no bundle in this rollout" if explicit else
                             f"none of its groups ({', '.join(inventory.groups[host]) or 'none'}) is a bundle's profile "
                             f"({', '.join(profiles)})")
    if limit:
        unknown = [x for x in limit if x not in inventory.hosts and not any(x in g for g in inventory.groups.values())]
        if unknown:
            raise EdgeDLError(f"--limit {', '.join(unknown)} matches no host or group of the inventory")
    return targets, skipped
