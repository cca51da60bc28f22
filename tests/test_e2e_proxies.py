"""Several proxies on real processes (issue 13 part 4): two Auth servers on
etcd, two standalone proxies, an agent given one proxy address (or a load
balancer) that keeps a tunnel to each proxy, a real kube-apiserver and
kubectl (tests/support/ha.py).

kubectl through either proxy reaches the cluster; with one proxy killed
(-9) kubectl through the other still does at once; a restarted proxy is
picked up again by the agent with no operator; one stopped cleanly
(SIGTERM) leaves `tctl get proxies` at once and the agent drops it; behind a TLS-passthrough TCP
load balancer in front of both proxies, tsh login and kubectl through the
balancer keep working with one proxy dead."""
from __future__ import annotations

import json
import os

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.e2e import KUBE_ACCESS_ROLE, PASSWORD, coroutine_test
from tests.support.ha import CLUSTER, HADeployment, RoundRobinBalancer


class SeveralProxiesTests(TestCase):
    timeout = 400

    async def deployment(self, configure=None) -> HADeployment:
        d = HADeployment(self, self.mktemp(), agents=1)
        if configure is not None:
            await configure(d)
        await d.start()
        await d.tctl("create", "-f", d.write("kube-access.yaml", KUBE_ACCESS_ROLE))
        await d.add_user("alice", "access,kube-access")
        await self.until(lambda: self.proxies_are(d, ["proxy0", "proxy1"]), 60, "both proxies in tctl get proxies", d)
        return d

    async def proxies(self, d: HADeployment) -> dict[str, str]:
        """``tctl get proxies``: nodename -> host id."""
        listed = json.loads((await d.tctl("get", "proxies", "--format=json")).out)
        return {p["spec"]["hostname"]: p["metadata"]["name"] for p in listed}

    async def proxies_are(self, d: HADeployment, names: list[str]) -> bool:
        return sorted(await self.proxies(d)) == names

    def home(self, d: HADeployment, name: str) -> dict:
        """A user's home of its own (tsh profile and kubeconfig)."""
        d.homes.append(d.path(f"home-{name}"))
        os.makedirs(d.homes[-1], exist_ok=True)
        return d.env(len(d.homes) - 1)

    async def login(self, d: HADeployment, proxy: str, env: dict) -> None:
        await d.tsh("login", f"--proxy={proxy}", "--user=alice", "--insecure", stdin=PASSWORD.encode() + b"\n",
                    env=env)
        await d.tsh("kube", "login", CLUSTER, env=env)

    async def kubectl_works(self, d: HADeployment, env: dict) -> bool:
        result = await d.kubectl("get", "namespaces", "--request-timeout=20s", env=env, expect=None)
        return result.code == 0 and "default" in result.out

    async def until(self, predicate, timeout: float, what: str, d: HADeployment) -> float:
        """Poll the async predicate; fires with the seconds it took."""
        start = reactor.seconds()
        while not await predicate():
            if reactor.seconds() - start > timeout:
                raise AssertionError(f"{what}: not within {timeout:.0f}s; agent log:\n{d.agents[0].log_tail(40)}")
            await deferLater(reactor, 0.5, lambda: None)
        return reactor.seconds() - start

    @coroutine_test
    async def test_agent_keeps_a_tunnel_to_each_proxy(self):
        d = await self.deployment()
        # The agent was given only proxy0; it learnt proxy1 from it.
        await d.login_everywhere("alice", PASSWORD)
        via = [d.env(0), d.env(1)]
        await self.until(lambda: self.kubectl_works(d, via[0]), 60, "kubectl through proxy0", d)
        await self.until(lambda: self.kubectl_works(d, via[1]), 60, "kubectl through proxy1", d)

        # proxy0 (the one the agent was given) dies: kubectl through proxy1 works at once.
        await d.proxy_procs[0].kill9()
        self.assertTrue(await self.kubectl_works(d, via[1]), d.agents[0].log_tail())
        self.assertFalse(await self.kubectl_works(d, via[0]))

        # Restarted (same identity, same address): the agent dials it again by itself.
        await d.start_proxy(0)
        took = await self.until(lambda: self.kubectl_works(d, via[0]), 60, "kubectl through restarted proxy0", d)
        print(f"\nrestarted proxy0 served kubectl again after {took:.1f}s")
        self.assertTrue(await self.kubectl_works(d, via[1]))

        # proxy1 stopped cleanly (SIGTERM): it deletes its heartbeat and tells the agent before it
        # goes, so tctl no longer lists it right away (not 30 s later) and the agent drops it.
        leaving = (await self.proxies(d))["proxy1"]
        self.assertEqual(await d.proxy_procs[1].stop(grace=15), 0, d.proxy_procs[1].log_tail())
        self.assertEqual(sorted(await self.proxies(d)), ["proxy0"])
        await d.agents[0].wait_for(
            lambda: f"proxy {leaving} is stopping".encode() in d.agents[0].output(), timeout=10)
        self.assertTrue(await self.kubectl_works(d, via[0]), d.agents[0].log_tail())

    @coroutine_test
    async def test_behind_a_load_balancer(self):
        balancers = []

        async def behind_balancer(d: HADeployment) -> None:
            balancer = RoundRobinBalancer(reactor, [("127.0.0.1", port) for port in d.proxy_ports])
            await balancer.listen()
            self.addCleanup(balancer.stop)
            balancers.append(balancer)
            # Both proxies name the balancer as their public address (their certificates carry
            # its name), and the agent is given only the balancer.
            d.proxy_public_addr = d.agent_proxy_server = f"127.0.0.1:{balancer.port}"

        d = await self.deployment(behind_balancer)
        lb = f"127.0.0.1:{balancers[0].port}"
        await d.login_everywhere("alice", PASSWORD)
        via = [d.env(0), d.env(1)]
        # Through each proxy directly: the agent found both behind the balancer.
        await self.until(lambda: self.kubectl_works(d, via[0]), 60, "kubectl through proxy0", d)
        await self.until(lambda: self.kubectl_works(d, via[1]), 60, "kubectl through proxy1", d)
        through_lb = self.home(d, "lb")
        await self.login(d, lb, through_lb)
        for _ in range(4):  # round robin: each proxy takes some of kubectl's connections
            self.assertTrue(await self.kubectl_works(d, through_lb))

        killed_at = len(d.agents[0].output())
        await d.proxy_procs[1].kill9()
        for _ in range(4):
            self.assertTrue(await self.kubectl_works(d, through_lb), d.agents[0].log_tail())
        # A fresh tsh login through the balancer, and kubectl with it.
        again = self.home(d, "lb-again")
        await self.login(d, lb, again)
        self.assertTrue(await self.kubectl_works(d, again))

        # proxy1's heartbeat expires (30 s): it leaves the list, and the agent stops dialling for it.
        await self.until(lambda: self.proxies_are(d, ["proxy0"]), 60, "proxy1 gone from tctl get proxies", d)
        only = (await self.proxies(d))["proxy0"]
        listed = f"proxies of the cluster: ['{only}']".encode()
        await d.agents[0].wait_for(lambda: listed in d.agents[0].output()[killed_at:], timeout=30)
        redials = d.agents[0].output().count(b"again (a load balancer?)")
        await deferLater(reactor, 20, lambda: None)  # > twice the backoff cap
        self.assertEqual(d.agents[0].output().count(b"again (a load balancer?)"), redials)
        self.assertTrue(await self.kubectl_works(d, through_lb))
