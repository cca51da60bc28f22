"""High availability on real processes (issue 13 part 5): a 3-member etcd
cluster with TLS client certificates, two auth servers on it, two proxies,
two agents serving one cluster of a real kube-apiserver (tests/support/ha.py).

kubectl works through each proxy. While two loops of kubectl GETs, a
``kubectl get -w`` and a loop of ``tsh login`` run, one member of each kind
is killed with SIGKILL, in turn: the etcd leader, an auth server, the agent
carrying an exec session, the proxy the agents were given (the loops then
go through the other one, as a load balancer would send them). For each
kill the loops' failure window (from the kill to the end of the last GET,
or login, that failed) must stay within what the design allows for that
kind (``BOUNDS``); the GET loop must recover while the member is still
down; the killed member is then started again as it was and must rejoin
with no operator step (etcd: serves a write made while it was down from its
own copy; auth: answers tctl; agent: an exec runs through it; proxy:
kubectl through it works again). Afterwards every GET the API server
answered has its ``kube.request`` event, no more than kubectl sent; a
failed login was one line saying to try again; the exec sessions across
the etcd, auth and proxy kills ran to their end and play back whole with
``tsh play``, the one whose agent died plays what it printed.

The failure windows are printed; bench/ha_failover.py measures them with
repeats (docs/benchmarks.md).
"""
from __future__ import annotations

import base64
import json
import os
import re
import uuid

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from teleport_py.failover import CONNECT_TIMEOUT
from tests.e2e import KUBE_ACCESS_ROLE, PASSWORD, coroutine_test, tool
from tests.support.ha import CLUSTER, HADeployment
from tests.support.kubeenv import create_running_pod, kubectl_binaries, register_node
from tests.support.kubelet import KubeletStandin
from tests.support.procs import run
from tests.support.session_roles import SESSIONS_RBAC, SESSIONS_ROLE

#: kubectl's --request-timeout in the GET loop: a GET that hangs on a dead
#: path fails after this long, so it is part of every bound.
REQUEST_TIMEOUT = 10.0
#: etcd's default --election-timeout (1000 ms); a new leader is elected
#: within two of them after the leader dies (raft's randomized timeouts lie
#: in [1, 2) election timeouts).
ETCD_ELECTION_TIMEOUT = 1.0

#: The longest failure window each kind of kill may cause, from the design:
#: - the kube request path does not touch etcd; Auth's calls to a dead
#:   member fail over to the next peer on connect, and a new leader takes
#:   at most two election timeouts;
#: - a proxy's (and through it an agent's) connection to a dead auth server
#:   fails over to the other one within failover.CONNECT_TIMEOUT;
#: - a killed agent's tunnel closes with its process (the kernel resets its
#:   sockets), so the proxy routes new streams to the other agent at once:
#:   only GETs in flight on it may fail;
#: - a killed proxy: kubectl goes through the other one (as a load balancer
#:   would send it), where both agents' tunnels are up (the agent pool).
#: Each bound adds one REQUEST_TIMEOUT: a GET that was in flight at the
#: end of the outage may hang that long before it fails.
BOUNDS = {
    "etcd leader": 2 * ETCD_ELECTION_TIMEOUT + REQUEST_TIMEOUT,
    "auth server": CONNECT_TIMEOUT + REQUEST_TIMEOUT,
    "agent": REQUEST_TIMEOUT,
    # The loop goes through the other proxy, whose tunnels from both agents
    # are up already; an agent's call to Auth in flight through the killed
    # proxy's tunnel may fail its request.
    "proxy": REQUEST_TIMEOUT,
}
#: GETs started after a kill that must succeed in a row before the killed
#: member is started again: the deployment works without it.
RECOVERED_GETS = 3
#: How long a recovery or a rejoin may take before the test gives up; a
#: generous limit, not a measurement.
PATIENCE = 90.0
#: GET loops running at once.
GET_LOOPS = 2
#: How long each exec'd session lasts around its kill.
EXEC_SECONDS = 5
#: tctl events returns at most this many (auth.audit.MAX_SEARCH_LIMIT).
SEARCH_LIMIT = 10000


class HighAvailabilityTests(TestCase):
    timeout = 600

    def setUp(self):
        from twisted.internet import reactor

        self.reactor = reactor
        self.gets: list[tuple[float, float, bool, str]] = []  # (start, end, answered, marker)
        self.attempts: dict[str, int] = {}
        self.logins: list[tuple[float, float, bool, str]] = []  # (start, end, succeeded, output)
        self.kills: list[tuple[str, float]] = []
        self.running = True
        #: The proxy the loops go through.
        self.via = 0

    def sleep(self, seconds: float):
        return deferLater(self.reactor, seconds, lambda: None)

    # -- the load ----------------------------------------------------------------------

    async def get_loop(self, binary: str) -> None:
        """GET a pod that does not exist, named by a fresh marker: a NotFound
        naming it can only come from the API server, through an agent, which
        audits it before answering (kube/durable_responses.py)."""
        while self.running:
            marker = f"ha-{uuid.uuid4().hex[:12]}"
            start = self.reactor.seconds()
            result = await self.d.kubectl("get", "pod", marker, f"--request-timeout={REQUEST_TIMEOUT:.0f}s", "-v=6",
                                          binary=binary, env=self.d.env(self.via), expect=None,
                                          timeout=REQUEST_TIMEOUT * 3)
            answered = f'"{marker}" not found' in result.err
            why = marker if answered else f"{marker}: {result.err.strip().splitlines()[-1:]}"
            self.gets.append((start, self.reactor.seconds(), answered, why))
            if answered:
                # client-go sends a GET again when its connection was reset
                # after the agent answered; each reached an agent.
                self.attempts[marker] = len(re.findall(rf'(?:\bGET |verb="GET" url=")\S*/pods/{marker}\b', result.err))

    async def login_loop(self) -> None:
        """``tsh login`` through the loops' proxy, in a home of its own, over and over."""
        home = self.d.path("login-home")
        env = {**self.d.env(0), "HOME": home, "TELEPORT_HOME": os.path.join(home, ".tsh"),
               "KUBECONFIG": os.path.join(home, "kubeconfig")}
        while self.running:
            start = self.reactor.seconds()
            result = await run([tool("tsh"), "login", f"--proxy={self.d.proxies_addr[self.via]}", "--user=alice",
                                "--insecure"], env=env, stdin=PASSWORD.encode() + b"\n", timeout=60)
            self.logins.append((start, self.reactor.seconds(), result.code == 0, result.out + result.err))
            await self.sleep(1.0)

    async def recovered(self, since: float, what: str) -> None:
        """RECOVERED_GETS GETs started after ``since`` answered in a row."""
        deadline = self.reactor.seconds() + PATIENCE
        while True:
            recent = [answered for start, _, answered, _ in self.gets if start >= since]
            if len(recent) >= RECOVERED_GETS and all(recent[-RECOVERED_GETS:]):
                return
            self.assertLess(self.reactor.seconds(), deadline,
                            f"the GET loop did not recover {what} within {PATIENCE:.0f}s: {recent}")
            await self.sleep(0.2)

    @staticmethod
    def failures(tries, killed: float, until: float) -> tuple[float, list]:
        """The failure window (from the kill to the end of the last try
        that failed before ``until``, the next kill; 0 if none did) and the
        failed tries of ``tries`` ((start, end, succeeded, detail) each). A
        try fails at its end, so it counts for the kill before its end."""
        failed = [(end, detail) for _, end, ok, detail in tries if not ok and killed <= end < until]
        return (max(end for end, _ in failed) - killed if failed else 0.0), [detail for _, detail in failed]

    def longest_gap(self, killed: float, until: float) -> float:
        """The longest time between two answered GETs ending, from the last
        before the kill to the last before ``until`` (what a user of the loop
        waits at most; reported, not asserted)."""
        ends = sorted(end for _, end, ok, _ in self.gets if ok and end < until)
        before = [end for end in ends if end <= killed][-1:]
        after = [end for end in ends if end > killed]
        points = before + after
        return max((b - a for a, b in zip(points, points[1:])), default=0.0)

    # -- sessions ------------------------------------------------------------------------

    async def exec_across(self, binary: str, name: str):
        """An exec session that prints, lives EXEC_SECONDS, prints again; fires
        once the first line is out (the kill comes next)."""
        said = f"{name}-{uuid.uuid4().hex[:6]}"
        session = self.d.spawn(f"exec-{name}", [binary, "exec", self.pod, "--", "sh", "-c",
                                                f"echo before-{said}; sleep {EXEC_SECONDS}; echo after-{said}"],
                               env=self.d.env(self.via))
        await session.wait_for_output(f"before-{said}", timeout=60)
        return session, said

    async def exec_finished(self, session, said: str) -> None:
        code = await session.exited
        self.assertEqual(code, 0, f"the exec across the kill failed:\n{session.log_tail()}")
        self.assertIn(f"after-{said}", session.output().decode())
        self.sessions_said.append((said, True))

    def session_counts(self) -> list[int]:
        """Exec sessions each agent process has logged starting."""
        return [proc.output().count(b"session started") for proc in self.d.agents]

    async def served_by(self, agent: int, binary: str) -> None:
        """Exec sessions until one runs through ``agent`` (the proxy picks
        among the least busy agents at random)."""
        before = self.session_counts()[agent]
        for _ in range(20):
            await self.d.kubectl("exec", self.pod, "--", "true", binary=binary, env=self.d.env(self.via))
            if self.session_counts()[agent] > before:
                return
        self.fail(f"20 exec sessions and none through the restarted agent {agent}")

    async def until_kubectl_works(self, proxy: int, binary: str) -> None:
        """kubectl through proxy ``proxy`` lists the test's pod (a restarted
        proxy: once the agents tunnel to it again)."""
        deadline = self.reactor.seconds() + PATIENCE
        while True:
            result = await self.d.kubectl("get", "pods", "-n", "default", "--request-timeout=10s", binary=binary,
                                          env=self.d.env(proxy), expect=None)
            if result.code == 0 and self.pod in result.out:
                return
            self.assertLess(self.reactor.seconds(), deadline, f"kubectl through proxy {proxy}: {result.err}")
            await self.sleep(0.5)

    async def played(self, said: str, whole: bool) -> None:
        """Some recording plays (``tsh play``) with the session's first line,
        and its last if the session ran to its end."""
        deadline = self.reactor.seconds() + PATIENCE
        while True:
            rows = (await self.d.tsh("recordings", "ls")).out.splitlines()[2:]
            for sid in [row.split()[0] for row in rows if row.strip()]:
                out = (await self.d.tsh("play", sid, "--speed", "1000", expect=None)).out
                if f"before-{said}" in out and (f"after-{said}" in out or not whole):
                    return
            self.assertLess(self.reactor.seconds(), deadline, f"no recording plays the session {said}: {rows}")
            await self.sleep(1)

    # -- rejoining ---------------------------------------------------------------------

    async def etcd_lead_from(self, member: int) -> None:
        """Make ``member`` the etcd leader (etcd's own leadership transfer),
        so that killing it also kills the member every Auth server talks to
        first (the first of its peers)."""
        count = len(self.d.etcd.members)
        ids = [(await self.d.etcd_call(i, "maintenance/status", {}))["header"]["member_id"] for i in range(count)]
        leader = ids.index((await self.d.etcd_call(0, "maintenance/status", {}))["leader"])
        if leader != member:
            await self.d.etcd_call(leader, "maintenance/transfer-leadership", {"targetID": ids[member]})
        status = await self.d.etcd_call(member, "maintenance/status", {})
        self.assertEqual(status["leader"], ids[member], "etcd did not move its leadership")

    async def etcd_rejoined(self, member: int, key: str) -> None:
        """The restarted member serves, from its own copy (a serializable
        read), a key written through the others while it was down."""
        encoded = base64.b64encode(key.encode()).decode()
        deadline = self.reactor.seconds() + PATIENCE
        while True:
            try:
                answer = await self.d.etcd_call(member, "kv/range", {"key": encoded, "serializable": True})
                if answer.get("kvs"):
                    return
            except Exception as failure:  # not serving yet
                last = failure
            else:
                last = answer
            self.assertLess(self.reactor.seconds(), deadline, f"etcd member {member} did not catch up: {last}\n"
                                                             f"{self.d.etcd.members[member].process.log_tail()}")
            await self.sleep(0.5)

    # -- the test ------------------------------------------------------------------------

    async def deploy(self) -> HADeployment:
        d = self.d = await HADeployment(self, self.mktemp()).start()
        await d.plane.apply(SESSIONS_RBAC)
        await d.tctl("create", "-f", d.write("sessions.yaml", SESSIONS_ROLE))
        await d.tctl("create", "-f", d.write("kube-access.yaml", KUBE_ACCESS_ROLE))
        await d.add_user("alice", "access")
        await d.tctl("users", "update", "alice", "--set-roles=access,kube-access,kube-sessions")
        await d.login_everywhere("alice", PASSWORD)
        root = d.path("pod-root")
        os.makedirs(root)
        standin = KubeletStandin(self.reactor, root)
        port = await standin.start()
        self.addCleanup(standin.stop)
        suffix = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.pod = f"ha-pod-{suffix}"
        await register_node(d.plane, f"ha-node-{suffix}", port)
        await create_running_pod(d.plane, self.pod, "default", f"ha-node-{suffix}")
        # Both agents' tunnels are up before the load starts.
        for agent in d.agents:
            await agent.wait_for_output("reverse tunnel up", PATIENCE)
        return d

    @coroutine_test
    async def test_kill9_one_of_each_under_load(self):
        self.sessions_said: list[tuple[str, bool]] = []
        d = await self.deploy()
        binary = kubectl_binaries()[-1]
        for i in range(len(d.proxies_addr)):  # kubectl through each proxy (the agents keep a tunnel to each)
            await self.until_kubectl_works(i, binary)

        watch = d.spawn("watch", [binary, "get", "pods", "-n", "default", "-w"], env=d.env(0))
        await watch.wait_for_output(self.pod, timeout=60)
        # Two GET loops, so that GETs run on both agents while one carries an exec
        # (the proxy picks the least busy agent).
        loops = [ensureDeferred(self.get_loop(binary)) for _ in range(GET_LOOPS)] + [ensureDeferred(self.login_loop())]

        async def stop_loops():
            self.running = False
            for loop in loops:
                await loop
        self.addCleanup(lambda: ensureDeferred(stop_loops()))
        await self.recovered(self.reactor.seconds(), "before any kill")

        async def kill(kind: str, process) -> float:
            killed = self.reactor.seconds()
            self.kills.append((kind, killed))
            await process.kill9()
            return killed

        # 1. The etcd leader, the member Auth servers talk to, with an exec session across it.
        leader = 0
        await self.etcd_lead_from(leader)
        session, said = await self.exec_across(binary, "etcd")
        killed = await kill("etcd leader", d.etcd.members[leader].process)
        await self.recovered(killed, "without the etcd leader")
        # A write the dead member has to catch up on: a new role through Auth.
        await d.tctl("create", "-f", d.write("while-down.yaml", SESSIONS_ROLE.replace("kube-sessions", "while-down")))
        await self.exec_finished(session, said)
        d.etcd.members[leader].spawn()
        await self.etcd_rejoined(leader, d.prefix + "/roles/while-down")
        self.assertTrue(watch.running, f"the watch ended when the etcd leader died:\n{watch.log_tail()}")

        # 2. The auth server the proxies use (the first: it answered first).
        session, said = await self.exec_across(binary, "auth")
        killed = await kill("auth server", d.auths[0])
        await self.recovered(killed, "without auth0")
        await self.exec_finished(session, said)
        await d.start_auth(0)
        await d.tctl("status")  # auth0 answers again (tctl uses auth0.yaml)
        self.assertTrue(watch.running, f"the watch ended when an auth server died:\n{watch.log_tail()}")

        # 3. The agent carrying an exec session: the session ends with it,
        # the proxy routes new streams to the other agent.
        before = self.session_counts()
        session, said = await self.exec_across(binary, "agent")
        carriers = [i for i, count in enumerate(self.session_counts()) if count > before[i]]
        self.assertEqual(len(carriers), 1, f"exec sessions started per agent: {before} -> {self.session_counts()}")
        victim = carriers[0]
        # docs/recordings.md: the spool reaches the disk at least every second.
        await self.sleep(2.5)
        killed = await kill("agent", d.agents[victim])
        self.assertNotEqual(await session.exited, 0, "the exec went on after its agent was killed")
        self.sessions_said.append((said, False))
        await self.recovered(killed, f"without agent {victim}")
        d.start_agent_process(victim)
        await d.agents[victim].wait_for_output("reverse tunnel up", PATIENCE)
        await self.served_by(victim, binary)
        # The watch went through one of the two agents; if it was the killed
        # one it ended with it (tests.test_e2e_faults), else it still runs.

        # 4. The proxy the agents were given (they learned the other from it):
        # kubectl through the other proxy keeps working, the agents go on
        # reaching Auth through it, and they tunnel to the restarted one.
        self.via = 1
        await self.recovered(self.reactor.seconds(), "through the second proxy")
        watch = d.spawn("watch", [binary, "get", "pods", "-n", "default", "-w"], env=d.env(1))
        await watch.wait_for_output(self.pod, timeout=60)
        session, said = await self.exec_across(binary, "proxy")
        killed = await kill("proxy", d.proxy_procs[0])
        await self.recovered(killed, "without proxy 0")
        await self.exec_finished(session, said)
        await d.start_proxy(0)
        await self.until_kubectl_works(0, binary)
        self.assertTrue(watch.running, f"the watch through the other proxy ended:\n{watch.log_tail()}")

        await stop_loops()
        result = {"gets": len(self.gets), "logins": len(self.logins), "kills": {}}
        for i, (kind, killed) in enumerate(self.kills):
            until = self.kills[i + 1][1] if i + 1 < len(self.kills) else self.reactor.seconds()
            get_window, failed_gets = self.failures(self.gets, killed, until)
            login_window, failed_logins = self.failures(self.logins, killed, until)
            result["kills"][kind] = {"window_s": round(get_window, 2), "failed_gets": failed_gets,
                                     "longest_gap_s": round(self.longest_gap(killed, until), 2),
                                     "login_window_s": round(login_window, 2), "failed_logins": failed_logins}
        print("HA result: " + json.dumps(result))  # bench/ha_failover.py reads this line

        for kind, measured in result["kills"].items():
            self.assertLessEqual(measured["window_s"], BOUNDS[kind], f"{kind}: GETs failed for "
                                 f"{measured['window_s']:.1f}s after the kill, more than the design's {BOUNDS[kind]:.0f}s")
            # tsh login works throughout: one in flight when a member died may
            # fail (only connecting fails over: a sent request is not retried,
            # it may have been applied), with one line saying to try again,
            # and no longer than the GETs may.
            self.assertLessEqual(measured["login_window_s"], BOUNDS[kind],
                                 f"{kind}: tsh login failed for {measured['login_window_s']:.1f}s")
            for out in measured["failed_logins"]:
                self.assertRegex(out, r"^ERROR: [^\n]*try again[^\n]*\n$", "a failed login is not one clear line")
        first_kill = self.kills[0][1]
        # A try fails at its end (as in failures()): one that began before the
        # first kill and ended after it was in flight when the member died.
        self.assertEqual([out for _, end, ok, out in self.logins if not ok and end < first_kill], [],
                         "tsh login failed before any kill")
        self.assertGreater(len(self.logins), 3, "the login loop hardly ran")

        # Every GET the API server answered has its audit event, once per GET sent.
        answered = {marker for *_, ok, marker in self.gets if ok}
        self.assertGreater(len(answered), 20, "the GET loop hardly ran")

        def counts(events):
            seen: dict[str, int] = {}
            for event in events:
                name = event.get("resource_name")
                if name in answered:
                    seen[name] = seen.get(name, 0) + 1
            return seen

        deadline = self.reactor.seconds() + PATIENCE
        while True:
            events = json.loads((await d.tctl("events", "--format=json", "--type=kube.request",
                                              f"--limit={SEARCH_LIMIT}")).out)
            self.assertLess(len(events), SEARCH_LIMIT, "more events than one search returns")
            if set(counts(events)) >= answered or self.reactor.seconds() > deadline:
                break
            await self.sleep(1)
        seen = counts(events)
        self.assertEqual(answered - set(seen), set(), "answered GETs without an audit event")
        self.assertEqual({m: (n, self.attempts[m]) for m, n in seen.items() if n > self.attempts[m]}, {},
                         "markers audited more often than kubectl sent them (events, GETs sent)")

        for said, whole in self.sessions_said:
            await self.played(said, whole)
