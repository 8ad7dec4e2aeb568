#!/usr/bin/env python3
"""Checks roles/flotilla/meta/argument_specs.yml against defaults/main.yml: every
default is documented with the same default value, every documented option has a
default or is required, and every variable the role reads is prefixed flotilla_."""
import pathlib
import re
import sys

import yaml

role = pathlib.Path(__file__).resolve().parent.parent / "roles" / "flotilla"
defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text())
spec = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
errors = []
for name, value in defaults.items():
    if not name.startswith("flotilla_"):
        errors.append(f"{name}: every variable is prefixed flotilla_")
    if name not in spec:
        errors.append(f"{name}: in defaults/main.yml but not documented in meta/argument_specs.yml")
    elif spec[name].get("default") != value:
        errors.append(f"{name}: default {value!r} in defaults/main.yml, {spec[name].get('default')!r} in argument_specs.yml")
for name, opt in spec.items():
    if name not in defaults and not opt.get("required"):
        errors.append(f"{name}: documented but has no default and is not required")
    if not opt.get("description"):
        errors.append(f"{name}: no description")
# Variables the role's tasks and templates read that are neither defaults nor its own
# facts (_flotilla_*) nor Ansible's.
used = set()
for f in list(role.rglob("*.yml")) + list(role.rglob("*.j2")):
    used |= set(re.findall(r"\b(flotilla_[a-z0-9_]+)\b", f.read_text()))
for name in sorted(used - set(defaults) - {"flotilla_upstream", "flotilla_relay", "flotilla_install", "flotilla_configure", "flotilla_run"}):  # module, namespace, tags
    errors.append(f"{name}: used by the role but not in defaults/main.yml")
for e in errors:
    print("argument_specs:", e, file=sys.stderr)
print(f"argument_specs: {len(spec)} options checked against defaults/main.yml, {len(errors)} problems")
sys.exit(1 if errors else 0)
