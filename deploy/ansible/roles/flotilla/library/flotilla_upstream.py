#!/usr/bin/python3
# -*- coding: utf-8 -*-
"""Reconcile one Flotilla upstream with its declaration, through the flotilla CLI."""

from __future__ import annotations

DOCUMENTATION = r"""
module: flotilla_upstream
short_description: Add, change or remove a Flotilla upstream to match its declaration
description:
  - Reads the upstream with C(flotilla upstream list -o json) and adds it when missing,
    replaces its replica users and replica count with C(flotilla upstream update) (which
    reports whether anything changed: passwords are compared with the stored hashes),
    replaces its candidates, or removes it with I(state=absent).
  - A different source or semi-sync setting is refused, not changed: moving an upstream to
    another master is a failover (C(flotilla upstream repoint) checks its continuity).
  - Passwords reach the CLI through private temporary files, never its command line.
options:
  cli: {description: Path of the flotilla binary., type: path, required: true}
  admin: {description: Admin API address., type: str, required: true}
  token_file: {description: Admin token file (empty for none)., type: path, default: ""}
  name: {description: Upstream name., type: str, required: true}
  state: {description: present or absent., type: str, default: present, choices: [present, absent]}
  source: {description: Master HOST:PORT., type: str}
  user: {description: Replication user on the master., type: str}
  password: {description: Its password., type: str, no_log: true}
  replica_users:
    description: Logins replicas use, each {user, password, auth_plugin, require_tls}.
    type: list
    elements: dict
  replicas: {description: Raft replicas of the group (0 for the default)., type: int, default: 0}
  candidates: {description: Sources to switch to when the source is down., type: list, elements: str, default: []}
  semi_sync: {description: auto, on or off., type: str, default: auto}
  flavor: {description: auto, mysql or mariadb., type: str, default: auto}
"""

import json
import os
import shutil
import tempfile

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(
        argument_spec=dict(
            cli=dict(type="path", required=True),
            admin=dict(type="str", required=True),
            token_file=dict(type="path", default=""),
            name=dict(type="str", required=True),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            source=dict(type="str"),
            user=dict(type="str"),
            password=dict(type="str", no_log=True),
            replica_users=dict(type="list", elements="dict", options=dict(
                user=dict(type="str", required=True),
                password=dict(type="str", required=True, no_log=True),
                auth_plugin=dict(type="str", default="mysql_native_password",
                                 choices=["mysql_native_password", "caching_sha2_password"]),
                require_tls=dict(type="bool", default=False),
            )),
            replicas=dict(type="int", default=0),
            candidates=dict(type="list", elements="str", default=[]),
            semi_sync=dict(type="str", default="auto"),
            flavor=dict(type="str", default="auto"),
        ),
        required_if=[("state", "present", ("source", "user", "password", "replica_users"))],
        supports_check_mode=False,
    )
    p = module.params
    base = [p["cli"], "--admin", p["admin"]]
    if p["token_file"]:
        base += ["--token-file", p["token_file"]]
    tmp = tempfile.mkdtemp(prefix="flotilla-upstream-")
    os.chmod(tmp, 0o700)

    def secret_file(value):
        fd, path = tempfile.mkstemp(dir=tmp)
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
        return path

    def run(args, what):
        rc, out, err = module.run_command(base + args)
        if rc != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            module.fail_json(msg="%s: %s" % (what, (err or out).strip()), rc=rc)
        return out

    def user_args():
        # The CLI takes one plugin and TLS requirement for the users it is given.
        users = p["replica_users"]
        kinds = {(ru["auth_plugin"], ru["require_tls"]) for ru in users}
        if len(kinds) > 1:
            module.fail_json(msg="upstream %s: give every replica user the same auth_plugin and require_tls "
                             "(flotilla upstream add/update take one of each)" % p["name"])
        plugin, tls = kinds.pop()
        args = ["--replica-auth-plugin", plugin]
        if tls:
            args.append("--replica-require-tls")
        for ru in users:
            args += ["--replica-user", ru["user"]]
        for ru in users:
            args += ["--replica-password-file", secret_file(ru["password"])]
        return args

    try:
        listed = json.loads(run(["upstream", "list", "-o", "json"], "flotilla upstream list"))
        cur = None
        for s in listed.get("upstreams") or []:
            if s.get("upstream", {}).get("name") == p["name"]:
                cur = s["upstream"]
        actions = []
        if p["state"] == "absent":
            if cur is not None:
                run(["upstream", "remove", p["name"]], "flotilla upstream remove")
                actions.append("removed")
            module.exit_json(changed=bool(actions), actions=actions)
        if cur is None:
            args = ["upstream", "add", p["name"], "--source", p["source"], "--user", p["user"],
                    "--password-file", secret_file(p["password"]), "--semi-sync", p["semi_sync"], "--flavor", p["flavor"]]
            if p["replicas"]:
                args += ["--replicas", str(p["replicas"])]
            for c in p["candidates"]:
                args += ["--candidate", c]
            run(args + user_args(), "flotilla upstream add %s" % p["name"])
            module.exit_json(changed=True, actions=["added"])
        if cur.get("source") != p["source"] and cur.get("source") in p["candidates"]:
            # An automatic switch to a declared candidate: the declaration still holds.
            module.warn("upstream %s now relays candidate %s (declared source %s): update the declaration"
                        % (p["name"], cur.get("source"), p["source"]))
        elif cur.get("source") != p["source"]:
            module.fail_json(msg="upstream %s relays %s, declared %s: moving it to another master is a failover; run "
                             "`flotilla upstream repoint %s --source %s` (it checks continuity), then run this again"
                             % (p["name"], cur.get("source"), p["source"], p["name"], p["source"]))
        if p["semi_sync"] != "auto" and cur.get("semiSync") not in ("", p["semi_sync"]):
            module.fail_json(msg="upstream %s has semi-sync %s, declared %s: it cannot change on an existing upstream "
                             "(remove and add it again)" % (p["name"], cur.get("semiSync"), p["semi_sync"]))
        if sorted(cur.get("candidates") or []) != sorted(p["candidates"]):
            args = ["upstream", "set-candidates", p["name"]]
            for c in p["candidates"]:
                args += ["--candidate", c]
            run(args, "flotilla upstream set-candidates %s" % p["name"])
            actions.append("candidates %s -> %s" % (cur.get("candidates") or [], p["candidates"]))
        args = ["upstream", "update", p["name"], "-o", "json"]
        if p["replicas"]:
            args += ["--replicas", str(p["replicas"])]
        upd = json.loads(run(args + user_args(), "flotilla upstream update %s" % p["name"]))
        if upd.get("changed"):
            actions += upd.get("changes") or []
        module.exit_json(changed=bool(actions), actions=actions)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
