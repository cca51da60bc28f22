"""tctl: the admin CLI, talking to the Auth API with an admin identity.

On the auth host tctl finds its identity the way Teleport's does: through the
config file's data dir (``<data_dir>/admin``), written by the running auth
service. Elsewhere, pass ``--identity DIR`` and ``--auth-server``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError, DNSLookupError, TimeoutError as ConnectTimeout
from twisted.web.client import ResponseFailed, ResponseNeverReceived
from twisted.internet.task import react

from teleport_py.auth.client import AuthClient, ClusterTLSPolicy
from teleport_py.auth.errors import AuthError
from teleport_py.cli_errors import exit_unexpected
from teleport_py.config import DEFAULT_CONFIG_PATH, ConfigError, load_config, parse_address
from teleport_py.failover import FailoverEndpoint
from teleport_py.identityfile import IdentityFile
from teleport_py.quiet import QuietHTTPConnectionPool
from teleport_py.password_prompt import PasswordInputError, read_password
from teleport_py.resources import ValidationError, parse_duration, parse_yaml, resource_from_dict, resource_to_dict, to_yaml
from teleport_py.resource_ids import requested_resources

KIND_ALIASES = {
    "role": "role", "roles": "role",
    "user": "user", "users": "user",
    "token": "token", "tokens": "token",
    "kube_server": "kube_server", "kube_servers": "kube_server",
    "lock": "lock", "locks": "lock",
    "proxy": "proxy", "proxies": "proxy",
}


class CLIError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tctl", description="Admin tool for a teleport_py cluster.")
    p.add_argument("-c", "--config", help=f"teleport.yaml of the auth host (default {DEFAULT_CONFIG_PATH} if it exists)")
    p.add_argument("--auth-server", help="auth service address host:port")
    p.add_argument("-i", "--identity", help="directory with an admin identity (cert.pem, key.pem, host_ca.pem)")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("create", help="create resources from a YAML file")
    c.add_argument("-f", "--filename", required=True, help="YAML file with one or more resources ('-' for stdin)")
    c.add_argument("--force", action="store_true", help="overwrite existing resources")

    g = sub.add_parser("get", help="print resources as YAML")
    g.add_argument("ref", help="KIND or KIND/NAME, e.g. roles, role/kube-access, users, tokens, kube_servers")
    g.add_argument("--format", choices=("yaml", "json", "text"), default="yaml")

    r = sub.add_parser("rm", help="delete a resource")
    r.add_argument("ref", help="KIND/NAME, e.g. role/kube-access")

    u = sub.add_parser("users", help="manage users").add_subparsers(dest="users_command", required=True)
    ua = u.add_parser("add", help="create a user and print a sign-up link")
    ua.add_argument("name")
    ua.add_argument("--roles", default="", help="comma-separated roles")
    ua.add_argument("--kubernetes-groups", default="", help="kubernetes_groups trait")
    ua.add_argument("--kubernetes-users", default="", help="kubernetes_users trait")
    uu = u.add_parser("update", help="change a user's roles or traits")
    uu.add_argument("name")
    uu.add_argument("--set-roles")
    uu.add_argument("--set-kubernetes-groups")
    uu.add_argument("--set-kubernetes-users")
    u.add_parser("ls", help="list users")
    ur = u.add_parser("rm", help="delete a user")
    ur.add_argument("name")
    ure = u.add_parser("reset", help="remove a user's password and print a new sign-up link")
    ure.add_argument("name")
    us = u.add_parser("signup", help="complete a sign-up: set the password for a sign-up token")
    us.add_argument("token", help="the token or the whole sign-up link")

    t = sub.add_parser("tokens", help="manage join tokens").add_subparsers(dest="tokens_command", required=True)
    ta = t.add_parser("add", help="create a join token")
    ta.add_argument("--type", required=True, help="token type(s): kube, proxy (comma-separated)")
    ta.add_argument("--ttl", default="30m", help="time to live, e.g. 30m, 1h (default 30m)")
    ta.add_argument("--format", choices=("text", "json", "yaml"), default=None)
    t.add_parser("ls", help="list join tokens")
    tr = t.add_parser("rm", help="delete a join token")
    tr.add_argument("token")

    sub.add_parser("status", help="cluster status")

    lk = sub.add_parser("lock", help="lock a user or a role: no logins, no requests, kube sessions end")
    target = lk.add_mutually_exclusive_group(required=True)
    target.add_argument("--user", help="the user to lock")
    target.add_argument("--role", help="lock every holder of this role")
    lk.add_argument("--message", default="", help="shown to the locked user")
    lk.add_argument("--ttl", default=None, help="lift the lock after this long, e.g. 1h (default: until tctl rm)")

    rq = sub.add_parser("requests", help="access requests").add_subparsers(dest="requests_command", required=True)
    rq.add_parser("ls", help="list access requests")
    for verb in ("approve", "deny"):
        rv = rq.add_parser(verb, help=f"{verb} an access request outright")
        rv.add_argument("request_id", metavar="ID")
        rv.add_argument("--reason", default="", help="why (the requester sees it)")

    e = sub.add_parser("events", help="search the audit log")
    e.add_argument("--from", dest="start", help="RFC 3339 start time (default: 24h ago)")
    e.add_argument("--to", dest="end", help="RFC 3339 end time (default: now)")
    e.add_argument("--type", default="", help="comma-separated event types, e.g. user.login,kube.request")
    e.add_argument("--limit", type=int, default=1000)
    e.add_argument("--format", choices=("json", "text"), default="text")
    return p


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


class Tctl:
    def __init__(self, reactor, args, out=sys.stdout, password: str | None = None):
        self.reactor = reactor
        self.args = args
        self.out = out
        self.password = password
        self.config = None
        config_path = args.config or (DEFAULT_CONFIG_PATH if os.path.exists(DEFAULT_CONFIG_PATH) else None)
        if config_path:
            try:
                self.config = load_config(config_path)
            except ConfigError as e:
                raise CLIError(f"configuration error: {e}") from None
        self.client = self._client()

    def _client(self) -> AuthClient:
        identity_dir = self.args.identity
        if identity_dir is None:
            data_dir = self.config.data_dir if self.config else load_config(None).data_dir
            identity_dir = os.path.join(data_dir, "admin")
        if not IdentityFile.exists(identity_dir):
            raise CLIError(
                f"no admin identity in {identity_dir}: run tctl on the auth host with --config pointing at its "
                "teleport.yaml (the auth service must have started once), or pass --identity"
            )
        try:
            identity = IdentityFile.load(identity_dir)
        except (OSError, ValueError) as e:
            raise CLIError(f"cannot read identity in {identity_dir}: {e}") from None
        return AuthClient.failover(
            self.reactor, FailoverEndpoint(self.reactor, [(a.connect_host(), a.port) for a in self._auth_addresses()]),
            ClusterTLSPolicy(identity.host_cas, identity.certificate, identity.private_key),
            QuietHTTPConnectionPool(self.reactor, persistent=False),
        )

    def _auth_addresses(self) -> list:
        """--auth-server; else this host's own auth service, then every one of
        teleport.auth_servers: each call goes to the first that connects."""
        if self.args.auth_server:
            return [parse_address(self.args.auth_server, "--auth-server", 3025)]
        addresses = []
        if self.config and self.config.auth:
            addresses.append(self.config.auth.listen_addr)
        if self.config:
            addresses.extend(a for a in self.config.auth_servers if a not in addresses)
        return addresses or [parse_address("127.0.0.1:3025", "--auth-server", 3025)]

    def print(self, text: str = "") -> None:
        self.out.write(text + "\n")

    def _proxy_hint(self) -> str:
        if self.config and self.config.proxy:
            if self.config.proxy.public_addr:
                return str(self.config.proxy.public_addr[0])
            listen = self.config.proxy.web_listen_addr
            return f"{listen.connect_host()}:{listen.port}"
        return "<proxy>:3080"

    async def run(self) -> None:
        handler = getattr(self, "cmd_" + self.args.command)
        await handler()

    async def cmd_create(self) -> None:
        path = self.args.filename
        try:
            text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
        except OSError as e:
            raise CLIError(f"cannot read {path}: {e.strerror}") from None
        try:
            resources = parse_yaml(text)
        except ValidationError as e:
            raise CLIError(f"{path}: {e}") from None
        if not resources:
            raise CLIError(f"{path}: no resources found")
        # Everything was validated locally before anything is sent; the server
        # validates again and refuses anything it does not accept.
        for resource in resources:
            doc = resource_to_dict(resource)
            result = await self.client.upsert(doc, force=self.args.force)
            kind, name = result["kind"], result["name"]
            verb = "has been created" if result["created"] else "has been updated"
            self.print(f'{kind} "{name}" {verb}')

    def _ref(self, ref: str, need_name: bool) -> tuple[str, str | None]:
        kind, _, name = ref.partition("/")
        canonical = KIND_ALIASES.get(kind.lower())
        if canonical is None:
            raise CLIError(f"unsupported resource kind {kind!r} (supported: role, user, token, kube_server, lock, proxy)")
        if need_name and not name:
            raise CLIError(f"expected KIND/NAME, e.g. {canonical}/example")
        return canonical, name or None

    async def cmd_get(self) -> None:
        kind, name = self._ref(self.args.ref, need_name=False)
        docs = [await self.client.get(kind, name)] if name else await self.client.list(kind)
        if self.args.format == "json":
            self.print(json.dumps(docs if not name else docs[0], indent=2, sort_keys=True))
            return
        resources = [resource_from_dict(d) for d in docs]
        if self.args.format == "text":
            for r in resources:
                self.print(getattr(r, "name", ""))
            return
        if resources:
            self.out.write(to_yaml(resources))

    async def cmd_rm(self) -> None:
        kind, name = self._ref(self.args.ref, need_name=True)
        await self.client.delete(kind, name)
        self.print(f'{kind} "{name}" has been deleted')

    def _invite(self, result: dict) -> None:
        ttl = int(result.get("ttl", 3600))
        hours = f"{ttl // 3600}h" if ttl % 3600 == 0 else f"{ttl // 60}m"
        proxy = self._proxy_hint()
        self.print(
            f'User "{result["user"]}" has been created but requires a password. Share this URL with the user to '
            f"complete user setup, link is valid for {hours}:"
        )
        self.print(f"https://{proxy}/web/invite/{result['token']}")
        self.print()
        self.print(f"NOTE: Make sure {proxy} points at a teleport_py proxy which users can access.")
        self.print(f"The user can also run: tsh signup --proxy={proxy} {result['token']}")

    async def cmd_users(self) -> None:
        sub = self.args.users_command
        a = self.args
        if sub == "add":
            traits = {}
            if a.kubernetes_groups:
                traits["kubernetes_groups"] = _csv(a.kubernetes_groups)
            if a.kubernetes_users:
                traits["kubernetes_users"] = _csv(a.kubernetes_users)
            result = await self.client.create_user(a.name, _csv(a.roles), traits)
            self._invite(result)
        elif sub == "update":
            traits = {}
            if a.set_kubernetes_groups is not None:
                traits["kubernetes_groups"] = _csv(a.set_kubernetes_groups)
            if a.set_kubernetes_users is not None:
                traits["kubernetes_users"] = _csv(a.set_kubernetes_users)
            roles = _csv(a.set_roles) if a.set_roles is not None else None
            if roles is None and not traits:
                raise CLIError("nothing to update: use --set-roles, --set-kubernetes-groups or --set-kubernetes-users")
            await self.client.update_user(a.name, roles=roles, traits=traits or None)
            self.print(f'User "{a.name}" has been updated')
        elif sub == "ls":
            users = [resource_from_dict(d) for d in await self.client.list("user")]
            self._table(["User", "Roles"], [[u.name, ",".join(u.roles)] for u in users])
        elif sub == "rm":
            await self.client.delete("user", a.name)
            self.print(f'User "{a.name}" has been deleted')
        elif sub == "reset":
            result = await self.client.reset_user(a.name)
            self.print(f'User "{a.name}" has been reset. Share this URL with the user to set a new password:')
            self.print(f"https://{self._proxy_hint()}/web/invite/{result['token']}")
        elif sub == "signup":
            token = a.token.rstrip("/").rsplit("/", 1)[-1]
            result = await self.client.signup(token, self.password)
            self.print(f'Password set for user "{result["user"]}"')

    async def cmd_tokens(self) -> None:
        sub = self.args.tokens_command
        if sub == "add":
            try:
                ttl = parse_duration(self.args.ttl)
            except ValueError as e:
                raise CLIError(f"--ttl: {e}") from None
            token = await self.client.create_token(_csv(self.args.type), ttl)
            name = token["metadata"]["name"]
            fmt = self.args.format
            if fmt == "text":
                self.print(name)
            elif fmt == "json":
                self.print(json.dumps(token, indent=2, sort_keys=True))
            elif fmt == "yaml":
                self.out.write(to_yaml([resource_from_dict(token)]))
            else:
                minutes = int(ttl // 60)
                self.print(f"The invite token: {name}")
                self.print(f"This token will expire in {minutes} minutes.")
                self.print()
                self.print("Run this on the new Kubernetes service host to join the cluster:")
                self.print()
                self.print(f"> twistd -n teleport-kube --config /etc/teleport.yaml   # with join_params.token_name: {name}")
                self.print()
                self.print(f"Please note:\n  - This invitation token will expire in {minutes} minutes")
                self.print(f"  - {self._proxy_hint()} must be reachable from the new host")
        elif sub == "ls":
            tokens = [resource_from_dict(d) for d in await self.client.list("token")]
            rows = [
                [t.name, ",".join(t.roles), ",".join(f"{k}={v}" for k, v in sorted(t.labels.items())),
                 t.expires.strftime("%d %b %y %H:%M UTC")]
                for t in tokens
            ]
            self._table(["Token", "Type", "Labels", "Expiry Time (UTC)"], rows)
        elif sub == "rm":
            await self.client.delete("token", self.args.token)
            self.print(f"Token {self.args.token} has been deleted")

    async def cmd_status(self) -> None:
        status = await self.client.status()
        rows = [
            ["Cluster", status["cluster_name"]],
            ["Version", "teleport_py"],
            ["CA pin", status["ca_pin"]],
            ["User CA", status["ca_fingerprints"]["user"]],
            ["Host CA", status["ca_fingerprints"]["host"]],
            ["Users", str(status["users"])],
            ["Roles", str(status["roles"])],
            ["Kube clusters", ", ".join(status["kube_clusters"]) or "-"],
        ]
        width = max(len(r[0]) for r in rows)
        for key, value in rows:
            self.print(f"{key + ':':<{width + 2}}{value}")

    async def cmd_events(self) -> None:
        a = self.args
        items = await self.client.search_events(a.start, a.end, _csv(a.type), a.limit)
        if a.format == "json":
            self.print(json.dumps(items, indent=2, sort_keys=True))
            return
        for ev in items:
            extras = " ".join(
                f"{k}={v}" for k, v in sorted(ev.items()) if k not in ("event", "time", "code", "uid", "cluster_name")
            )
            self.print(f"{ev['time']} {ev['event']} [{ev.get('code', '')}] {extras}")

    async def cmd_lock(self) -> None:
        a = self.args
        ttl = None
        if a.ttl:
            try:
                ttl = parse_duration(a.ttl)
            except ValueError as e:
                raise CLIError(f"--ttl: {e}") from None
        doc = await self.client.create_lock(user=a.user or "", role=a.role or "", message=a.message, ttl=ttl)
        self.print(f'Created a lock with name "{doc["metadata"]["name"]}".')

    async def cmd_requests(self) -> None:
        a = self.args
        if a.requests_command == "ls":
            rows = []
            for item in await self.client.list_access_requests():
                spec = item["spec"]
                rows.append([item["metadata"]["name"], spec["user"], ",".join(spec.get("roles") or []),
                             ",".join(requested_resources(spec)), spec["created"][:19], spec["state"],
                             spec.get("request_reason", "")])
            self._table(["ID", "User", "Roles", "Resources", "Created (UTC)", "Status", "Reason"], rows)
            return
        state = "APPROVED" if a.requests_command == "approve" else "DENIED"
        item = await self.client.resolve_access_request(a.request_id, state, a.reason)
        self.print(f"Access request {item['metadata']['name']} is now {item['spec']['state']}.")

    def _table(self, headers: list[str], rows: list[list[str]]) -> None:
        widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
        self.print(" ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
        self.print(" ".join("-" * w for w in widths))
        for r in rows:
            self.print(" ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def main(argv=None) -> None:
    args = _parser().parse_args(argv)
    password = None
    if args.command == "users" and args.users_command == "signup":
        try:
            password = read_password("Password: ", confirm=True)
        except PasswordInputError as e:
            sys.stderr.write(f"ERROR: {e}\n")
            raise SystemExit(1)

    async def run(reactor):
        try:
            await Tctl(reactor, args, password=password).run()
        except (CLIError, AuthError) as e:
            sys.stderr.write(f"ERROR: {e}\n")
            raise SystemExit(1)
        except (ConnectError, DNSLookupError, ResponseFailed, ResponseNeverReceived, ConnectTimeout, CancelledError) as e:
            sys.stderr.write(f"ERROR: cannot reach the auth service: {e}\n")
            raise SystemExit(1)
        except Exception as e:
            exit_unexpected("tctl", e)

    react(lambda reactor: Deferred.fromCoroutine(run(reactor)))


if __name__ == "__main__":
    main()
