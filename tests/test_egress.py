from __future__ import annotations

import pytest

from ruststash.egress import EgressPolicy, is_internal, pinned_address, refusal


@pytest.mark.parametrize(
    ("address", "internal"),
    [
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("192.168.1.1", True),
        ("169.254.169.254", True),
        ("::1", True),
        ("fd00::1", True),
        ("fe80::1", True),
        ("::ffff:10.0.0.1", True),
        ("0.0.0.0", True),
        ("224.0.0.1", True),
        ("140.82.112.3", False),
        ("2606:4700::1111", False),
    ],
)
def test_is_internal(address: str, internal: bool) -> None:
    assert is_internal(address) is internal


def test_no_policy_allows_everything() -> None:
    assert refusal(EgressPolicy(), "github.com", 443, ["10.0.0.1"]) is None


def test_tunnel_allow_patterns() -> None:
    policy = EgressPolicy(tunnel_allow=("github.com", "*.githubusercontent.com"))
    assert refusal(policy, "github.com", 443, []) is None
    assert refusal(policy, "GitHub.com", 443, []) is None
    assert refusal(policy, "raw.githubusercontent.com", 443, []) is None
    assert refusal(policy, "a.b.githubusercontent.com", 443, []) is not None  # one label only
    assert refusal(policy, "evilgithub.com", 443, []) == "evilgithub.com is not in --tunnel-allow"


def test_deny_private_and_what_is_always_allowed() -> None:
    policy = EgressPolicy(deny_private=True, always_allowed=frozenset({("127.0.0.1", 8443)}))
    assert refusal(policy, "127.0.0.1", 8443, ["127.0.0.1"]) is None
    reason = refusal(policy, "intranet.example", 443, ["140.82.112.3", "10.0.0.7"])
    assert reason is not None and "10.0.0.7" in reason
    assert refusal(policy, "github.com", 443, ["140.82.112.3"]) is None


def test_deny_private_refuses_a_name_that_does_not_resolve() -> None:
    """A later lookup (mitmproxy's own connect) could answer with an internal address."""
    policy = EgressPolicy(deny_private=True)
    assert refusal(policy, "gone.example", 443, []) == "gone.example does not resolve and --deny-private-tunnels is set"
    assert refusal(EgressPolicy(), "gone.example", 443, []) is None


def test_the_checked_address_is_the_one_connected_to_only_with_deny_private() -> None:
    policy = EgressPolicy(deny_private=True, always_allowed=frozenset({("origin.example", 443)}))
    assert pinned_address(policy, "github.com", 443, ["140.82.112.3", "140.82.112.4"]) == "140.82.112.3"
    assert pinned_address(policy, "origin.example", 443, ["140.82.112.3"]) is None  # ours: by name
    assert pinned_address(EgressPolicy(tunnel_allow=("github.com",)), "github.com", 443, ["140.82.112.3"]) is None
