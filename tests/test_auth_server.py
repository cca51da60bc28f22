"""AuthServer logic: CAs, users, login, tokens, joins, authorization, audit.

Runs against the in-memory backend with the real reactor (password hashing
uses its thread pool); time-dependent checks shift the auth server's clock.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from teleport_py import events
from teleport_py.auth.errors import AccessDenied, AlreadyExists, BadParameter, LimitExceeded, NotFound
from teleport_py.auth.server import AuthServer
from teleport_py.backend import MemoryBackend
from teleport_py.pki import HostIdentity, UserIdentity, identity_from_certificate, load_certificate_pem
from teleport_py.resources import parse_yaml, resource_to_dict
from tests.support.auth_callers import ADMIN, PROXY, public_pem
from tests.support.clocks import ShiftedClock
from tests.support.seed import KUBE_ACCESS_ROLE as KUBE_ACCESS

PASSWORD = "correct horse battery"






def d(coro):
    return Deferred.fromCoroutine(coro)


class AuthServerTests(TestCase):
    async def _setup(self):
        self.clock = ShiftedClock(reactor)
        self.backend = MemoryBackend(self.clock)
        self.addCleanup(self.backend.close)
        self.auth = await AuthServer.initialize(self.clock, self.backend, "example")
        return self.auth

    async def _user(self, name="alice", roles=("access",)):
        result = await self.auth.users.create(ADMIN, parse_yaml(f"kind: user\nversion: v2\nmetadata: {{name: {name}}}\nspec: {{roles: [{', '.join(roles)}]}}\n")[0])
        await self.auth.users.complete_signup(PROXY, result["token"], PASSWORD)
        return result

    def test_initialize_is_idempotent(self):
        async def go():
            auth = await self._setup()
            again = await AuthServer.initialize(self.clock, self.backend, "example")
            self.assertEqual(auth.user_ca.certificate, again.user_ca.certificate)
            self.assertEqual(auth.host_ca.certificate, again.host_ca.certificate)
            self.assertNotEqual(auth.user_ca.certificate, auth.host_ca.certificate)
            names = [r["metadata"]["name"] for r in await auth.resources.list(ADMIN, "role")]
            self.assertIn("access", names)
            self.assertIn("editor", names)
            with self.assertRaises(RuntimeError):
                await AuthServer.initialize(self.clock, self.backend, "other-cluster")

        return d(go())

    def test_create_role_and_conflicts(self):
        async def go():
            auth = await self._setup()
            doc = resource_to_dict(parse_yaml(KUBE_ACCESS)[0])
            result = await auth.resources.upsert(ADMIN, doc)
            self.assertTrue(result["created"])
            with self.assertRaises(AlreadyExists):
                await auth.resources.upsert(ADMIN, doc)
            result = await auth.resources.upsert(ADMIN, doc, force=True)
            self.assertFalse(result["created"])
            stored = await auth.resources.get(ADMIN, "role", "kube-access")
            self.assertEqual(stored["spec"]["allow"]["kubernetes_groups"], ["viewers"])

        return d(go())

    def test_invalid_role_names_field_and_stores_nothing(self):
        async def go():
            auth = await self._setup()
            doc = resource_to_dict(parse_yaml(KUBE_ACCESS)[0])
            doc["spec"]["allow"]["kubernetes_resources"][0]["verbs"] = ["gett"]
            with self.assertRaises(BadParameter) as cm:
                await auth.resources.upsert(ADMIN, doc)
            self.assertIn("verbs", str(cm.exception))
            with self.assertRaises(NotFound):
                await auth.resources.get(ADMIN, "role", "kube-access")

        return d(go())

    def test_signup_and_login(self):
        async def go():
            auth = await self._setup()
            await auth.resources.upsert(ADMIN, resource_to_dict(parse_yaml(KUBE_ACCESS)[0]))
            await self._user(roles=("access", "kube-access"))
            result = await auth.user_certificates.login(PROXY, "alice", PASSWORD, public_pem(), client_addr="10.0.0.1")
            cert = load_certificate_pem(result["cert"].encode())
            identity = identity_from_certificate(cert, user_ca=auth.user_ca.certificate, host_ca=auth.host_ca.certificate)
            self.assertIsInstance(identity, UserIdentity)
            self.assertEqual(identity.username, "alice")
            self.assertEqual(identity.roles, ("access", "kube-access"))
            lifetime = identity.expires - datetime.fromtimestamp(self.clock.seconds(), timezone.utc)
            self.assertLessEqual(lifetime, timedelta(hours=12))
            self.assertGreater(lifetime, timedelta(hours=11))
            logins = await auth.audit.search(
                datetime.now(timezone.utc) - timedelta(minutes=5), datetime.now(timezone.utc) + timedelta(minutes=5),
                [events.USER_LOGIN],
            )
            self.assertEqual([e["success"] for e in logins], [True])

        return d(go())

    def test_signup_token_single_use_and_weak_password(self):
        async def go():
            auth = await self._setup()
            user = parse_yaml("kind: user\nversion: v2\nmetadata: {name: bob}\nspec: {roles: [access]}\n")[0]
            result = await auth.users.create(ADMIN, user)
            with self.assertRaises(BadParameter):
                await auth.users.complete_signup(PROXY, result["token"], "short")
            await auth.users.complete_signup(PROXY, result["token"], PASSWORD)
            with self.assertRaises(NotFound):
                await auth.users.complete_signup(PROXY, result["token"], PASSWORD + "x")
            with self.assertRaises(AccessDenied):
                await auth.users.complete_signup(
                    UserIdentity(username="bob", roles=("access",), expires=datetime.now(timezone.utc)), "t", PASSWORD
                )

        return d(go())

    def test_wrong_password_and_unknown_user_look_the_same(self):
        async def go():
            auth = await self._setup()
            await self._user()
            errors = []
            for user, password in (("alice", "wrong password!!"), ("nobody", PASSWORD)):
                try:
                    await auth.user_certificates.login(PROXY, user, password, public_pem())
                except AccessDenied as e:
                    errors.append(str(e))
            self.assertEqual(len(errors), 2)
            self.assertEqual(errors[0], errors[1])
            failures = await auth.audit.search(
                datetime.now(timezone.utc) - timedelta(minutes=5), datetime.now(timezone.utc) + timedelta(minutes=5),
                [events.USER_LOGIN],
            )
            self.assertEqual([(e["user"], e["success"]) for e in failures], [("alice", False), ("nobody", False)])

        return d(go())

    def test_lockout_after_repeated_failures(self):
        async def go():
            auth = await self._setup()
            await self._user()
            for _ in range(auth.user_certificates.limiter.rules.max_failures):
                with self.assertRaises(AccessDenied):
                    await auth.user_certificates.login(PROXY, "alice", "wrong password!!", public_pem())
            with self.assertRaises(LimitExceeded):
                await auth.user_certificates.login(PROXY, "alice", PASSWORD, public_pem())
            self.clock.offset += auth.user_certificates.limiter.rules.lockout + 1
            await auth.user_certificates.login(PROXY, "alice", PASSWORD, public_pem())

        return d(go())

    def test_login_only_through_proxy(self):
        async def go():
            auth = await self._setup()
            await self._user()
            kube = HostIdentity(host_id="k", nodename="k", system_role="kube", teleport_cluster="example")
            with self.assertRaises(AccessDenied):
                await auth.user_certificates.login(kube, "alice", PASSWORD, public_pem())

        return d(go())

    def test_ttl_capped_by_max_session_ttl(self):
        async def go():
            auth = await self._setup()
            role = KUBE_ACCESS.replace("spec:\n", "spec:\n  options:\n    max_session_ttl: 1h\n")
            await auth.resources.upsert(ADMIN, resource_to_dict(parse_yaml(role)[0]))
            await self._user(roles=("kube-access",))
            result = await auth.user_certificates.login(PROXY, "alice", PASSWORD, public_pem(), ttl=48 * 3600)
            cert = load_certificate_pem(result["cert"].encode())
            lifetime = cert.not_valid_after_utc - datetime.fromtimestamp(self.clock.seconds(), timezone.utc)
            self.assertLessEqual(lifetime, timedelta(hours=1))

        return d(go())

    def test_reissue_never_outlives_caller(self):
        async def go():
            auth = await self._setup()
            await self._user()
            caller = UserIdentity(
                username="alice", roles=("access",), teleport_cluster="example",
                expires=datetime.fromtimestamp(self.clock.seconds() + 600, timezone.utc),
            )
            result = await auth.user_certificates.reissue(caller, public_pem(), "", None)
            cert = load_certificate_pem(result["cert"].encode())
            self.assertLessEqual(cert.not_valid_after_utc, caller.expires)
            with self.assertRaises(NotFound):
                await auth.user_certificates.reissue(caller, public_pem(), "no-such-cluster", None)

        return d(go())

    def test_join_with_kube_token(self):
        async def go():
            auth = await self._setup()
            token = (await auth.join_tokens.create(ADMIN, ["kube"], 1800))["metadata"]["name"]
            result = await auth.join_tokens.join(token, "kube", public_pem(), "host-1", "node1", ["kube.example.com", "auth.teleport.cluster.local"])
            cert = load_certificate_pem(result["cert"].encode())
            identity = identity_from_certificate(cert, user_ca=auth.user_ca.certificate, host_ca=auth.host_ca.certificate)
            self.assertEqual((identity.system_role, identity.host_id), ("kube", "host-1"))
            from cryptography import x509

            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
            self.assertIn("kube.example.com", names)
            self.assertNotIn("auth.teleport.cluster.local", names)
            # Wrong role, unknown token, expired token: all refused the same way and audited.
            with self.assertRaises(AccessDenied):
                await auth.join_tokens.join(token, "proxy", public_pem(), "host-2", "node2")
            with self.assertRaises(AccessDenied):
                await auth.join_tokens.join("0" * 32, "kube", public_pem(), "host-3", "node3")
            self.clock.offset += 1801
            with self.assertRaises(AccessDenied):
                await auth.join_tokens.join(token, "kube", public_pem(), "host-4", "node4")
            joins = await auth.audit.search(
                datetime.now(timezone.utc) - timedelta(minutes=5), datetime.now(timezone.utc) + timedelta(hours=1),
                [events.INSTANCE_JOIN],
            )
            self.assertEqual([e["success"] for e in joins], [True, False, False, False])
            self.assertTrue(all(token not in str(e) for e in joins), "the token secret leaked into the audit log")

        return d(go())

    def test_rules_authorize_users(self):
        async def go():
            auth = await self._setup()
            editor = UserIdentity(username="ed", roles=("editor",), expires=datetime.now(timezone.utc) + timedelta(hours=1))
            plain = UserIdentity(username="al", roles=("access",), expires=datetime.now(timezone.utc) + timedelta(hours=1))
            doc = resource_to_dict(parse_yaml(KUBE_ACCESS)[0])
            with self.assertRaises(AccessDenied):
                await auth.resources.upsert(plain, doc)
            await auth.resources.upsert(editor, doc)
            kube = HostIdentity(host_id="k", nodename="k", system_role="kube", teleport_cluster="example")
            with self.assertRaises(AccessDenied):
                await auth.resources.list(kube, "user")

        return d(go())

    def test_update_user_roles(self):
        async def go():
            auth = await self._setup()
            await auth.resources.upsert(ADMIN, resource_to_dict(parse_yaml(KUBE_ACCESS)[0]))
            await self._user()
            user = await auth.users.update(ADMIN, "alice", roles=["access", "kube-access"])
            self.assertEqual(user.roles, ("access", "kube-access"))
            with self.assertRaises(BadParameter):
                await auth.users.update(ADMIN, "alice", roles=["nope"])
            with self.assertRaises(BadParameter):
                await auth.resources.delete(ADMIN, "role", "kube-access")

        return d(go())

    def test_heartbeats_and_cluster_listing(self):
        async def go():
            auth = await self._setup()
            kube = HostIdentity(host_id="agent-1", nodename="n", system_role="kube", teleport_cluster="example")
            server = {
                "kind": "kube_server", "version": "v3", "metadata": {"name": "my-cluster"},
                "spec": {"host_id": "agent-1", "hostname": "n", "version": "teleport_py",
                         "cluster": {"kind": "kube_cluster", "version": "v3",
                                     "metadata": {"name": "my-cluster", "labels": {"env": "prod"}}, "spec": {}}},
            }
            await auth.kube_servers.heartbeat(kube, server)
            other = HostIdentity(host_id="agent-2", nodename="n", system_role="kube", teleport_cluster="example")
            with self.assertRaises(AccessDenied):
                await auth.kube_servers.heartbeat(other, server)
            self.assertEqual(await auth.kube_servers.clusters(), {"my-cluster": {"env": "prod"}})
            await self._user(roles=("access",))
            alice = UserIdentity(username="alice", roles=("access",), expires=datetime.now(timezone.utc) + timedelta(hours=1))
            self.assertEqual(
                await auth.kube_servers.list_for(alice), [{"name": "my-cluster", "labels": {"env": "prod"},
                                                           "kubernetes_users": ["alice"],
                                                           "kubernetes_groups": ["system:authenticated"]}]
            )
            self.clock.offset += 200
            self.assertEqual(await auth.kube_servers.clusters(), {})

        return d(go())

    def test_a_clean_stop_says_goodbye_for_its_own_record_only(self):
        async def go():
            auth = await self._setup()
            agents = [HostIdentity(host_id=f"agent-{i}", nodename="n", system_role="kube", teleport_cluster="example")
                      for i in (1, 2)]
            for agent in agents:
                await auth.kube_servers.heartbeat(agent, {
                    "kind": "kube_server", "version": "v3", "metadata": {"name": "my-cluster"},
                    "spec": {"host_id": agent.host_id, "hostname": "n", "version": "teleport_py",
                             "cluster": {"kind": "kube_cluster", "version": "v3",
                                         "metadata": {"name": "my-cluster", "labels": {}}, "spec": {}}},
                })
            await auth.kube_servers.goodbye(agents[0], "my-cluster")
            self.assertEqual(await auth.kube_servers.clusters(), {"my-cluster": {}})  # agent-2 still serves it
            await auth.kube_servers.goodbye(agents[1], "my-cluster")
            self.assertEqual(await auth.kube_servers.clusters(), {})
            alice = UserIdentity(username="alice", roles=("access",), expires=datetime.now(timezone.utc) + timedelta(hours=1))
            with self.assertRaises(AccessDenied):
                await auth.kube_servers.goodbye(alice, "my-cluster")
            with self.assertRaises(BadParameter):
                await auth.kube_servers.goodbye(agents[0], "../x")

        return d(go())

    def test_a_proxy_stopping_cleanly_drops_its_own_record_only(self):
        async def go():
            auth = await self._setup()
            proxies = [HostIdentity(host_id=f"proxy-{i}", nodename="n", system_role="proxy", teleport_cluster="example")
                       for i in (1, 2)]
            for proxy in proxies:
                await auth.proxies.heartbeat(proxy, {
                    "kind": "proxy", "version": "v2", "metadata": {"name": proxy.host_id},
                    "spec": {"hostname": "n", "tunnel_addr": "t:3024", "public_addr": "lb:443"}})
            await auth.proxies.goodbye(proxies[0])
            self.assertEqual([p["metadata"]["name"] for p in await auth.proxies.list(proxies[1])], ["proxy-2"])
            kube = HostIdentity(host_id="proxy-2", nodename="n", system_role="kube", teleport_cluster="example")
            with self.assertRaises(AccessDenied):
                await auth.proxies.goodbye(kube)  # an agent named like a proxy cannot drop it
            self.assertEqual(len(await auth.proxies.list(proxies[1])), 1)

        return d(go())

    def test_agents_append_audit_batches(self):
        async def go():
            auth = await self._setup()
            kube = HostIdentity(host_id="agent-1", nodename="n", system_role="kube", teleport_cluster="example")
            now = self.clock.seconds()
            batch = [
                events.make_event("kube.request", now, verb="get", server_id="forged")
                for _ in range(3)
            ]
            self.assertEqual(await auth.events.append(kube, batch), 3)
            await auth.events.append(kube, batch)  # an upload retried after a crash
            start = datetime.fromtimestamp(now - 60, timezone.utc)
            end = datetime.fromtimestamp(now + 60, timezone.utc)
            stored = await auth.events.search(ADMIN, start, end, ["kube.request"], 100)
            self.assertEqual(sorted(e["uid"] for e in stored), sorted(e["uid"] for e in batch))
            self.assertEqual({e["server_id"] for e in stored}, {"agent-1"})

            broken = [events.make_event("kube.request", now, verb="list"), {"event": "kube.request"}]
            with self.assertRaises(BadParameter):
                await auth.events.append(kube, broken)
            with self.assertRaises(BadParameter):
                await auth.events.append(kube, [events.make_event("kube.request", now), "not an object"])
            self.assertEqual(len(await auth.events.search(ADMIN, start, end, ["kube.request"], 100)), 3,
                             "a batch with a malformed event stores none of it")
            alice = UserIdentity(username="alice", roles=("access",), expires=datetime.now(timezone.utc) + timedelta(hours=1))
            with self.assertRaises(AccessDenied):
                await auth.events.append(alice, batch)

            # A spool segment larger than one backend transaction is stored whole.
            large = [events.make_event("kube.request", now, verb="watch") for _ in range(300)]
            self.assertEqual(await auth.events.append(kube, large), 300)
            self.assertEqual(len(await auth.events.search(ADMIN, start, end, ["kube.request"], 1000)), 303)

        return d(go())


class KubeAgentRoleAccessTests(TestCase):
    """A kube agent reads roles to authorize kubectl requests, and nothing more."""

    def test_kube_agent_reads_roles_only(self):
        async def go():
            clock = ShiftedClock(reactor)
            backend = MemoryBackend(clock)
            self.addCleanup(backend.close)
            auth = await AuthServer.initialize(clock, backend, "example")
            kube = HostIdentity(host_id="agent-1", nodename="n", system_role="kube", teleport_cluster="example")
            await auth.authorizer.check(kube, "role", "read")
            await auth.authorizer.check(kube, "role", "list")
            for kind, verb in (("role", "create"), ("role", "update"), ("role", "delete"), ("user", "read"),
                               ("token", "list"), ("event", "list")):
                with self.assertRaises(AccessDenied):
                    await auth.authorizer.check(kube, kind, verb)
            proxy = HostIdentity(host_id="p", nodename="n", system_role="proxy", teleport_cluster="example")
            with self.assertRaises(AccessDenied):
                await auth.authorizer.check(proxy, "role", "read")

        return d(go())
