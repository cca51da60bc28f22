"""tsh's commands (teleport_py.tsh.cli parses the command line, teleport_py.tsh.main dispatches).

Passwords are read before the reactor starts (getpass on a terminal, one line
from stdin otherwise), so nothing blocks the reactor thread. The private key
is generated here and never sent anywhere; the proxy only ever sees its
public half.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import shutil
import sys
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

from attrs import evolve
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import threads
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.error import ConnectError, DNSLookupError, TimeoutError as ConnectTimeout
from twisted.internet.task import deferLater, react
from OpenSSL.SSL import Error as TLSError
from twisted.web.client import RequestTransmissionFailed, ResponseFailed, ResponseNeverReceived

from teleport_py.cli_errors import exit_unexpected
from teleport_py.identityfile import IdentityFile
from teleport_py.password_prompt import PasswordInputError, read_password
from teleport_py.pki import (
    UserIdentity,
    certificate_pem,
    generate_private_key,
    load_certificate_pem,
    load_certificates_pem,
)
from teleport_py.recording.asciicast import AsciicastWriter
from teleport_py.recording.format import RecordingFormatError, RecordingReader
from teleport_py.resources import parse_duration
from teleport_py.resource_ids import KUBE_CLUSTER, NAMESPACE, ResourceID, parse_resource_id, requested_resources
from teleport_py.tsh import kubeconfig
from teleport_py.tsh.credentials import exec_credential, signed_user_identity, usable_kube_certificate
from teleport_py.tsh.localproxy import KubeLocalProxyFactory, LocalCA, listener_tls_options, local_kubeconfig
from teleport_py.tsh.layout import ProfileError, check_kube_cluster_name, default_home, normalize_proxy
from teleport_py.tsh.profile import Profile, ProfileStore
from teleport_py.tsh.webclient import WebClient, WebError


class CLIError(Exception):
    pass


#: Seconds between looks at a request ``tsh request create`` waits on.
REQUEST_POLL_INTERVAL = 1.0


def format_duration(delta: timedelta) -> str:
    """Go's time.Duration style (12h0m0s), as Teleport prints validity."""
    seconds = max(int(delta.total_seconds()), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return "%dh%dm%ds" % (hours, minutes, seconds)
    if minutes:
        return "%dm%ds" % (minutes, seconds)
    return "%ds" % seconds


def _tsh_command() -> str:
    """What kubectl should run for credentials: this very tsh, by absolute path."""
    running = os.path.abspath(sys.argv[0])
    if os.path.basename(running).startswith("tsh") and os.access(running, os.X_OK):
        return running
    return shutil.which("tsh") or "tsh"


def _public_key_pem(private_key) -> str:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def _certificate_from_response(result: dict, private_key, user_cas) -> tuple[x509.Certificate, UserIdentity]:
    """The certificate in a login/reissue answer, checked: our key, signed by the cluster's user CA."""
    try:
        certificate = load_certificate_pem(result["cert"].encode())
    except (KeyError, AttributeError, ValueError):
        raise WebError("the proxy's answer carries no usable certificate") from None
    if certificate.public_key() != private_key.public_key():
        raise WebError("the proxy returned a certificate for another key")
    identity = signed_user_identity(certificate, user_cas)
    if identity is None:
        raise WebError("the proxy returned a certificate not signed by the cluster's user CA")
    return certificate, identity


def _login_identity(identity: IdentityFile) -> UserIdentity:
    """What the stored login certificate says (its roles and access requests)."""
    _, user = _certificate_from_response(
        {"cert": certificate_pem(identity.certificate).decode()}, identity.private_key, identity.user_cas)
    return user


def _cas_from_response(result: dict) -> tuple[tuple[x509.Certificate, ...], tuple[x509.Certificate, ...]]:
    try:
        cas = result["cas"]
        user_cas = tuple(c for pem in cas["user"] for c in load_certificates_pem(pem.encode()))
        host_cas = tuple(c for pem in cas["host"] for c in load_certificates_pem(pem.encode()))
    except (KeyError, TypeError, AttributeError, ValueError):
        raise WebError("the proxy's answer carries no usable CA certificates") from None
    if not user_cas or not host_cas:
        raise WebError("the proxy's answer lacks the cluster's CA certificates")
    return user_cas, host_cas


class _Player:
    """Writes recording events: text with the original timing (scaled by
    ``--speed``), or JSON lines or asciicast v2 at once."""

    def __init__(self, reactor, out, args) -> None:
        self.reactor = reactor
        self.out = out
        self.speed = args.speed
        self.json = args.format == "json"
        self.asciicast = AsciicastWriter() if args.format == "asciicast" else None
        self.started = reactor.seconds()

    def close(self) -> None:
        if self.asciicast is not None:
            self.out.write(self.asciicast.close())
            self.out.flush()

    async def play(self, event: dict) -> None:
        if self.asciicast is not None:
            self.out.write(self.asciicast.feed(event))
            return
        if self.json:
            if "data" in event:
                event = {**event, "data": event["data"].decode("utf-8", "replace")}
            self.out.write(json.dumps(event, sort_keys=True) + "\n")
            self.out.flush()
            return
        if event["type"] != "print":
            return
        delay = self.started + event["ms"] / 1000.0 / self.speed - self.reactor.seconds()
        if delay > 0:
            await deferLater(self.reactor, delay, lambda: None)
        binary = getattr(self.out, "buffer", None)
        if binary is not None:
            self.out.flush()
            binary.write(event["data"])
            binary.flush()
        else:
            self.out.write(event["data"].decode("utf-8", "replace"))
            self.out.flush()


class Tsh:
    def __init__(self, reactor, args, *, password: str | None = None, out=sys.stdout, environ=os.environ):
        self.reactor = reactor
        self.args = args
        self.password = password
        self.out = out
        self.environ = environ
        self.store = ProfileStore(default_home(environ))

    def print(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.reactor.seconds(), timezone.utc)

    async def run(self) -> None:
        args = self.args
        if args.command == "kube":
            await getattr(self, "cmd_kube_" + args.kube_command)()
        elif args.command == "proxy":
            await self.cmd_proxy_kube()
        elif args.command == "recordings":
            await getattr(self, "cmd_recordings_" + args.recordings_command)()
        elif args.command == "request":
            await getattr(self, "cmd_request_" + args.request_command)()
        else:
            await getattr(self, "cmd_" + args.command)()

    # -- helpers ---------------------------------------------------------------

    def _logged_in(self, proxy: str | None = None) -> tuple[Profile, IdentityFile]:
        """The profile and its identity, refusing an expired login with what to do about it."""
        profile = self.store.profile(None if proxy is None else normalize_proxy(proxy))
        identity = self.store.identity(profile)
        if identity.expires <= self.now():
            raise CLIError(
                "your login to %s expired at %s; run 'tsh login --proxy=%s --user=%s'"
                % (profile.proxy, identity.expires.isoformat(), profile.proxy, profile.user)
            )
        return profile, identity

    def _client(self, profile: Profile, identity: IdentityFile) -> WebClient:
        return WebClient(
            self.reactor,
            profile.proxy,
            insecure=profile.insecure,
            host_cas=identity.host_cas,
            certificate=identity.certificate,
            private_key=identity.private_key,
        )

    async def kube_certificate(self, profile: Profile, identity: IdentityFile, kube_cluster: str) -> x509.Certificate:
        """The stored certificate for ``kube_cluster`` while it has time left, else a fresh one.

        kubectl runs ``tsh kube credentials`` for every parallel request;
        the lock makes the first one reissue and the others reuse its result.
        Either way the credential cache (teleport_py.tsh.credentialcache)
        then holds this certificate's ExecCredential.
        """
        check_kube_cluster_name(kube_cluster)
        async with self.store.lock(profile, self.reactor):
            certificate = self.store.kube_certificate(profile, kube_cluster)
            if certificate is None or not usable_kube_certificate(certificate, identity, kube_cluster, self.now()):
                result = await self._client(profile, identity).reissue(
                    _public_key_pem(identity.private_key), kube_cluster)
                certificate, issued = _certificate_from_response(result, identity.private_key, identity.user_cas)
                if issued.kube_cluster != kube_cluster:
                    raise WebError("the proxy returned a certificate for another kubernetes cluster")
                self.store.save_kube_certificate(profile, kube_cluster, certificate)
            self.store.save_credential_cache(profile, identity, kube_cluster, certificate)
            return certificate

    def _print_status(self, profile: Profile, identity: IdentityFile) -> None:
        try:
            user = _login_identity(identity)
            roles = ", ".join(user.roles)
            requests = ", ".join(user.access_requests)
            resources = ", ".join(map(str, user.allowed_resources))
        except WebError:
            roles, requests, resources = "(unreadable certificate)", "", ""
        left = identity.expires - self.now()
        validity = "[valid for %s]" % format_duration(left) if left.total_seconds() > 0 else "[EXPIRED]"
        rows = [
            ("Profile URL:", "https://%s" % profile.proxy),
            ("Logged in as:", profile.user),
            ("Cluster:", profile.cluster),
            ("Roles:", roles),
            ("Kubernetes:", "enabled"),
        ]
        if requests:
            rows.insert(4, ("Active requests:", requests))
        if resources:
            rows.insert(5, ("Allowed resources:", resources))
        if profile.kube_cluster:
            rows.append(("Kubernetes cluster:", '"%s"' % profile.kube_cluster))
        rows.append(("Valid until:", "%s %s" % (identity.expires.strftime("%Y-%m-%d %H:%M:%S %z"), validity)))
        width = max(len(label) for label, _ in rows)
        for index, (label, value) in enumerate(rows):
            self.print("%s %s %s" % (">" if index == 0 else " ", label.ljust(width), value))

    # -- commands ----------------------------------------------------------------

    async def cmd_login(self) -> None:
        a = self.args
        proxy = normalize_proxy(a.proxy)
        ttl = None
        if a.ttl:
            try:
                ttl = parse_duration(a.ttl)
            except ValueError as error:
                raise CLIError("--ttl: %s" % error) from None
        client = WebClient(self.reactor, proxy, insecure=a.insecure)
        otp = ""
        if (await client.ping()).get("second_factor") == "otp":
            # Asked on a thread: the reactor runs, and a person may take a while.
            try:
                otp = await threads.deferToThreadPool(
                    self.reactor, self.reactor.getThreadPool(), read_password, "Enter an OTP code from a device: ")
            except PasswordInputError as error:
                raise CLIError("this cluster asks for an OTP code at login: %s" % error) from None
        private_key = generate_private_key()
        result = await client.login(a.user, self.password, _public_key_pem(private_key), ttl, otp)
        user_cas, host_cas = _cas_from_response(result)
        certificate, identity = _certificate_from_response(result, private_key, user_cas)
        cluster = result.get("cluster_name") or identity.teleport_cluster
        profile = Profile(proxy=proxy, user=identity.username, cluster=cluster, insecure=a.insecure)
        identity_file = IdentityFile(certificate, private_key, user_cas, host_cas)
        if a.request_id:
            identity_file = await self._elevated(profile, identity_file, a.request_id)
        async with self.store.lock(profile, self.reactor):
            self.store.save_login(profile, identity_file)
        self._print_status(profile, identity_file)

    async def cmd_status(self) -> None:
        profile = self.store.profile()
        self._print_status(profile, self.store.identity(profile))

    async def cmd_logout(self) -> None:
        profile = self.store.profile()
        path = kubeconfig.kubeconfig_path(self.environ)
        if path.exists():
            with kubeconfig.locked(path):
                config = kubeconfig.load(path)
                kubeconfig.remove_teleport_cluster(config, profile.cluster)
                kubeconfig.save(path, config)
        async with self.store.lock(profile, self.reactor):
            self.store.remove(profile)
        self.print("Logged out %s from %s." % (profile.user, profile.proxy))

    async def cmd_signup(self) -> None:
        a = self.args
        proxy = normalize_proxy(a.proxy)
        token = a.token.rstrip("/").rsplit("/", 1)[-1]
        result = await WebClient(self.reactor, proxy, insecure=a.insecure).signup(token, self.password)
        user = result.get("user", "")
        self.print('Password set for user "%s". Log in with: tsh login --proxy=%s --user=%s' % (user, proxy, user))

    async def cmd_kube_ls(self) -> None:
        profile, identity = self._logged_in()
        clusters = await self._client(profile, identity).kube_clusters()
        rows = []
        for item in sorted(clusters, key=lambda c: str(c["name"])):
            labels = item.get("labels") if isinstance(item.get("labels"), dict) else {}
            rows.append([
                str(item["name"]),
                ",".join("%s=%s" % (k, v) for k, v in sorted(labels.items())),
                "*" if item["name"] == profile.kube_cluster else "",
            ])
        self._table(["Kube Cluster Name", "Labels", "Selected"], rows)

    async def cmd_kube_login(self) -> None:
        name = check_kube_cluster_name(self.args.name)
        profile, identity = self._logged_in()
        clusters = await self._client(profile, identity).kube_clusters()
        if name not in {c["name"] for c in clusters}:
            raise CLIError('kubernetes cluster "%s" not found; run \'tsh kube ls\' to see the clusters you can reach' % name)
        await self.kube_certificate(profile, identity, name)
        path = kubeconfig.kubeconfig_path(self.environ)
        with kubeconfig.locked(path):
            config = kubeconfig.load(path)
            kubeconfig.merge_teleport_cluster(
                config,
                teleport_cluster=profile.cluster,
                proxy=profile.proxy,
                host_ca_pem=b"".join(map(certificate_pem, identity.host_cas)),
                kube_cluster=name,
                exec_command=_tsh_command(),
                exec_args=[
                    "kube", "credentials",
                    "--proxy=%s" % profile.proxy,
                    "--teleport-cluster=%s" % profile.cluster,
                    "--kube-cluster=%s" % name,
                ],
            )
            kubeconfig.save(path, config)
        async with self.store.lock(profile, self.reactor):
            self.store.save_profile(evolve(profile, kube_cluster=name))
        self.print("Logged into Kubernetes cluster \"%s\". Try 'kubectl version' to test the connection." % name)

    async def cmd_kube_credentials(self) -> None:
        a = self.args
        profile, identity = self._logged_in(a.proxy)
        if a.teleport_cluster and a.teleport_cluster != profile.cluster:
            raise CLIError(
                "logged in to cluster %r, not %r; run 'tsh login --proxy=%s'" % (profile.cluster, a.teleport_cluster, profile.proxy)
            )
        certificate = await self.kube_certificate(profile, identity, a.kube_cluster)
        self.print(json.dumps(exec_credential(certificate, identity.private_key), indent=2))

    async def cmd_proxy_kube(self) -> None:
        a = self.args
        profile, identity = self._logged_in()
        wanted = list(dict.fromkeys(a.kube_clusters)) or ([profile.kube_cluster] if profile.kube_cluster else [])
        if not wanted:
            raise CLIError("no kubernetes cluster selected; pass cluster names or run 'tsh kube login NAME' first")
        reachable = {c["name"] for c in await self._client(profile, identity).kube_clusters()}
        missing = [name for name in wanted if name not in reachable]
        if missing:
            raise CLIError('kubernetes cluster "%s" not found' % missing[0])
        now = self.now()
        local_ca = LocalCA.load_or_create(self.store.key_dir(profile) / "localca", now)
        client_key = generate_private_key()
        client_certificate = local_ca.issue_client_certificate(client_key.public_key(), now, identity.expires)

        async def credentials(kube_cluster: str):
            return await self.kube_certificate(profile, identity, kube_cluster), identity.private_key

        factory = KubeLocalProxyFactory(
            self.reactor,
            proxy_host=profile.proxy_host,
            proxy_port=profile.proxy_port,
            host_cas=identity.host_cas,
            kube_clusters=wanted,
            credentials=lambda kube_cluster: Deferred.fromCoroutine(credentials(kube_cluster)),
        )
        tls = listener_tls_options(local_ca, now, identity.expires, await factory.kube_protocols(wanted[0]))
        port = await SSL4ServerEndpoint(self.reactor, a.port, tls, interface="127.0.0.1").listen(factory)
        path = self.store.key_dir(profile) / "localproxy-kubeconfig.yaml"
        kubeconfig.save(path, local_kubeconfig(
            teleport_cluster=profile.cluster,
            kube_clusters=wanted,
            port=port.getHost().port,
            ca=local_ca.certificate,
            client_certificate=client_certificate,
            client_key=client_key,
        ))
        self.print("Started local proxy for Kubernetes on 127.0.0.1:%d" % port.getHost().port)
        self.print("Use the following config for your Kubernetes applications:")
        self.print()
        self.print("export KUBECONFIG=%s" % path)
        self.print()
        await Deferred()  # serve until the reactor stops (Ctrl-C)

    async def cmd_recordings_ls(self) -> None:
        profile, identity = self._logged_in()
        items = await self._client(profile, identity).recordings()
        rows = [[str(m.get("session_id", "")), str(m.get("user", "")), str(m.get("kind", "")),
                 "%s/%s" % (m.get("namespace", ""), m.get("pod", "")), " ".join(m.get("command") or []),
                 str(m.get("time", ""))[:19], "yes" if m.get("complete") else "no"] for m in items]
        self._table(["ID", "User", "Kind", "Pod", "Command", "Started", "Complete"], rows)

    async def cmd_play(self) -> None:
        """Pages of the recording from Auth (through the proxy), replayed as they arrive."""
        profile, identity = self._logged_in()
        client = self._client(profile, identity)
        session_id = quote(self.args.session_id, safe="")
        reader, player, offset = RecordingReader(), _Player(self.reactor, self.out, self.args), 0
        while True:
            page = await client.recording_data(session_id, offset)
            try:
                data = base64.b64decode(page["data"], validate=True)
                offset = int(page["next_offset"])
                for event in reader.feed(data):
                    await player.play(event)
            except (KeyError, TypeError, ValueError, binascii.Error, RecordingFormatError) as e:
                raise CLIError("the recording is unreadable: %s" % e) from None
            if not data or offset >= int(page["size"]):
                break
        reader.close()
        player.close()

    async def _elevated(self, profile: Profile, identity: IdentityFile, request_ids: list[str]) -> IdentityFile:
        """The login reissued with the roles of ``request_ids`` (approved
        access requests; none: the user's own roles only), same key: Auth
        checks each is ours and approved. It never outlives ``identity``."""
        result = await self._client(profile, identity).reissue(
            _public_key_pem(identity.private_key), "", list(dict.fromkeys(request_ids)))
        certificate, _ = _certificate_from_response(result, identity.private_key, identity.user_cas)
        return IdentityFile(certificate, identity.private_key, identity.user_cas, identity.host_cas)

    async def cmd_request_create(self) -> None:
        a = self.args
        roles = [r.strip() for r in a.roles.split(",") if r.strip()]
        resources = list(dict.fromkeys(r.strip() for r in a.resource if r.strip()))
        if not roles and not resources:
            raise CLIError("name at least one role (--roles=kube-access) or resource "
                           "(--resource=/<teleport-cluster>/pod/<kube-cluster>/<namespace>/<pod>; "
                           "'tsh request search' lists them)")
        for resource in resources:
            try:
                parse_resource_id(resource)
            except ValueError as e:
                raise CLIError("--resource: %s" % e) from None
        profile, identity = self._logged_in()
        client = self._client(profile, identity)
        created = await client.create_access_request(roles, a.reason, resources)
        request_id = str(created.get("metadata", {}).get("name", ""))
        self.print("Request ID: %s" % request_id)
        if a.nowait:
            self.print("Check on it with 'tsh request show %s'; once approved, run "
                       "'tsh login --proxy=%s --request-id=%s'." % (request_id, profile.proxy, request_id))
            return
        self.print("Waiting for the request to be approved (Ctrl-C to stop waiting; the request stays)...")
        while True:
            spec = (await client.access_request(request_id)).get("spec", {})
            state = spec.get("state")
            if state != "PENDING":
                break
            await deferLater(self.reactor, REQUEST_POLL_INTERVAL, lambda: None)
        reason = spec.get("resolve_reason") or ""
        if state != "APPROVED":
            raise CLIError("request %s was %s%s" % (request_id, str(state).lower(), ": %s" % reason if reason else ""))
        self.print("Approved%s." % (": %s" % reason if reason else ""))
        current = _login_identity(identity)
        elevated = await self._elevated(profile, identity, [*current.access_requests, request_id])
        async with self.store.lock(profile, self.reactor):
            self.store.save_login(profile, elevated)
        self._print_status(profile, elevated)

    async def cmd_request_drop(self) -> None:
        """Teleport's ``tsh request drop [ID ...]``: the login reissued from
        the current certificate (no password) without the named requests'
        roles and resources; no ID, or ``*``, drops them all. save_login
        deletes the kube certificates and credential caches of the elevated
        login, so kubectl's next call gets a certificate without them."""
        profile, identity = self._logged_in()
        active = _login_identity(identity).access_requests
        wanted = list(dict.fromkeys(self.args.request_ids))
        if not wanted or "*" in wanted:
            wanted = list(active)
        unknown = [request_id for request_id in wanted if request_id not in active]
        if unknown:
            raise CLIError("access request %s is not in your current certificate (%s); 'tsh status' lists them" % (
                ", ".join(unknown), "active requests: %s" % ", ".join(active) if active else "it has none"))
        if not wanted:
            self.print("No access requests to drop: your certificate has none.")
            self._print_status(profile, identity)
            return
        dropped = await self._elevated(profile, identity, [r for r in active if r not in wanted])
        async with self.store.lock(profile, self.reactor):
            self.store.save_login(profile, dropped)
        self.print("Dropped access request%s %s." % ("s" if len(wanted) > 1 else "", ", ".join(wanted)))
        self._print_status(profile, dropped)

    async def cmd_request_ls(self) -> None:
        profile, identity = self._logged_in()
        items = await self._client(profile, identity).access_requests()
        rows = []
        for item in items:
            spec = item.get("spec", {})
            rows.append([str(item.get("metadata", {}).get("name", "")), str(spec.get("user", "")),
                         ",".join(map(str, spec.get("roles") or [])), ",".join(requested_resources(spec)),
                         str(spec.get("created", ""))[:19], str(spec.get("state", "")),
                         str(spec.get("request_reason", ""))])
        self._table(["ID", "User", "Roles", "Resources", "Created (UTC)", "Status", "Reason"], rows)

    async def cmd_request_search(self) -> None:
        """Teleport's ``tsh request search``: resources your roles and those
        you may search as reach, each with the id to pass to
        ``tsh request create --resource``."""
        a = self.args
        profile, identity = self._logged_in()
        client = self._client(profile, identity)
        keywords = [k.strip().lower() for k in a.search.split(",") if k.strip()]
        if a.kind == KUBE_CLUSTER:
            clusters = await client.kube_clusters(search_as_roles=True)
            found = [{"name": str(c["name"]), "namespace": "", "labels": c.get("labels") or {},
                      "id": str(ResourceID(profile.cluster, KUBE_CLUSTER, str(c["name"])))} for c in clusters]
        else:
            kube_cluster = a.kube_cluster or profile.kube_cluster
            if not kube_cluster:
                raise CLIError("--kube-cluster: name the kubernetes cluster to search "
                               "('tsh request search --kind=kube_cluster' lists them)")
            check_kube_cluster_name(kube_cluster)
            namespace = "" if a.all_kube_namespaces or a.kind == NAMESPACE else a.kube_namespace
            answer = await client.kube_resources(a.kind, kube_cluster, namespace)
            found = answer["items"]
            if answer.get("truncated"):
                self.print("(only the first %d resources: narrow the search with --kube-namespace)" % len(found))
        rows, ids = [], []
        for item in found:
            labels = item.get("labels") or {}
            label_text = ",".join("%s=%s" % (k, v) for k, v in sorted(labels.items()))
            text = " ".join([str(item.get("name", "")), str(item.get("namespace", "")), label_text]).lower()
            if not all(k in text for k in keywords):
                continue
            ids.append(str(item["id"]))
            if a.kind == KUBE_CLUSTER:
                rows.append([str(item["name"]), label_text, ids[-1]])
            else:
                rows.append([str(item.get("name", "")), str(item.get("namespace", "")), label_text, ids[-1]])
        headers = (["Name", "Labels", "Resource ID"] if a.kind == KUBE_CLUSTER
                   else ["Name", "Namespace", "Labels", "Resource ID"])
        self._table(headers, rows)
        if ids:
            self.print()
            self.print("To request access to these resources, run")
            self.print("> tsh request create --resource %s \\" % " --resource ".join(ids))
            self.print("    --reason <request reason>")
            self.print()

    async def cmd_request_show(self) -> None:
        profile, identity = self._logged_in()
        item = await self._client(profile, identity).access_request(self.args.request_id)
        self._print_request(item)

    def _print_request(self, item: dict) -> None:
        spec = item.get("spec", {})
        rows = [
            ("Request ID:", str(item.get("metadata", {}).get("name", ""))),
            ("User:", str(spec.get("user", ""))),
            ("Roles:", ", ".join(map(str, spec.get("roles") or []))),
            ("Resources:", ", ".join(requested_resources(spec))),
            ("Reason:", str(spec.get("request_reason", ""))),
            ("Status:", str(spec.get("state", ""))),
            ("Access expires:", str(spec.get("expires", ""))),
        ]
        if spec.get("resolve_reason"):
            rows.append(("Resolve reason:", str(spec["resolve_reason"])))
        width = max(len(label) for label, _ in rows)
        for label, value in rows:
            self.print("%s %s" % (label.ljust(width), value))
        for review in spec.get("reviews") or []:
            self.print("Review: %s %s %s%s" % (
                review.get("author", ""), review.get("proposed_state", ""), str(review.get("created", ""))[:19],
                ": %s" % review["reason"] if review.get("reason") else ""))

    async def cmd_request_review(self) -> None:
        a = self.args
        profile, identity = self._logged_in()
        state = "APPROVED" if a.approve else "DENIED"
        item = await self._client(profile, identity).review_access_request(a.request_id, state, a.reason)
        self.print("Reviewed request %s: %s (request is now %s)." % (
            a.request_id, state.lower(), item.get("spec", {}).get("state", "")))

    def _table(self, headers: list[str], rows: list[list[str]]) -> None:
        widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
        self.print(" ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
        self.print(" ".join("-" * w for w in widths))
        for row in rows:
            self.print(" ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def run(args) -> None:
    """Every command but a ``kube credentials`` that the cache or the stored certificate answers (see main.py)."""
    try:
        password = (
            read_password("Enter password: ", confirm=args.command == "signup")
            if args.command in ("login", "signup") else None
        )
    except PasswordInputError as error:
        sys.stderr.write("ERROR: %s\n" % error)
        raise SystemExit(1)

    async def run(reactor):
        try:
            await Tsh(reactor, args, password=password).run()
        except (CLIError, ProfileError, WebError, kubeconfig.KubeconfigError) as error:
            sys.stderr.write("ERROR: %s\n" % error)
            raise SystemExit(1)
        except (ConnectError, DNSLookupError, RequestTransmissionFailed, ResponseFailed, ResponseNeverReceived,
                ConnectTimeout, CancelledError) as error:
            sys.stderr.write("ERROR: cannot reach the proxy: %s\n" % _describe(error))
            raise SystemExit(1)
        except Exception as error:
            exit_unexpected("tsh", error)

    react(lambda reactor: Deferred.fromCoroutine(run(reactor)))


def _describe(error: Exception) -> str:
    """treq's errors wrap the real reason (often a TLS verification failure) in a list of Failures."""
    reasons = getattr(error, "reasons", None) or []
    if any(reason.check(TLSError) for reason in reasons):
        return "its TLS certificate is not trusted (--insecure skips the check: for testing only)"
    if reasons:
        return "; ".join(str(reason.value) for reason in reasons)
    return str(error)
