"""The privacy accountant (dp-accounting's RDP) against the Gaussian mechanism's closed forms.

The exact epsilon of the Gaussian mechanism with sensitivity 1 and std sigma is the root of the analytic
Gaussian mechanism's delta (Balle & Wang 2018, Theorem 8):

    delta(eps) = Phi(1 / (2 sigma) - eps sigma) - e^eps Phi(-1 / (2 sigma) - eps sigma),

and T rounds with multiplier z compose exactly to one Gaussian mechanism with multiplier z / sqrt(T) (the sum
of T Gaussian releases is a Gaussian release). RDP is an upper bound: never below the exact value, and not far
above it; never above the classical RDP bound T/(2z^2) + sqrt(2 T ln(1/delta)) / z it improves on.
"""

import math

import pytest

from consortium.federated import accountant

scipy_stats = pytest.importorskip("scipy.stats")
scipy_optimize = pytest.importorskip("scipy.optimize")


def analytic_gaussian_epsilon(sigma: float, delta: float) -> float:
    """Balle & Wang's exact epsilon, written out here independently of the library."""
    phi = scipy_stats.norm.cdf

    def excess(eps: float) -> float:
        return phi(1 / (2 * sigma) - eps * sigma) - math.exp(eps) * phi(-1 / (2 * sigma) - eps * sigma) - delta

    return scipy_optimize.brentq(excess, 0.0, 500.0, xtol=1e-12)


def classical_rdp_bound(z: float, rounds: int, delta: float) -> float:
    return rounds / (2 * z * z) + math.sqrt(2 * rounds * math.log(1 / delta)) / z


@pytest.mark.parametrize("z", [0.7, 1.0, 2.0, 5.0, 10.0])
@pytest.mark.parametrize("delta", [1e-5, 1e-7])
def test_it_bounds_one_round_close_above_the_analytic_gaussian_mechanism(z, delta):
    exact = analytic_gaussian_epsilon(z, delta)
    spent = accountant.epsilon({z: 1}, delta)
    assert exact <= spent <= 1.25 * exact
    assert spent <= classical_rdp_bound(z, 1, delta)


def test_it_agrees_with_the_reference_value_for_one_round():
    # z = 1, delta = 1e-5: the analytic Gaussian mechanism gives 4.3772; the classical RDP bound 5.2985.
    assert analytic_gaussian_epsilon(1.0, 1e-5) == pytest.approx(4.37718, abs=1e-4)
    assert accountant.epsilon({1.0: 1}, 1e-5) == pytest.approx(4.7285, abs=1e-3)


@pytest.mark.parametrize(("z", "rounds"), [(1.1, 20), (4.0, 50), (0.8, 100), (3.0, 500)])
def test_it_composes_rounds_close_to_the_exact_composed_gaussian(z, rounds):
    delta = 1e-5
    exact = analytic_gaussian_epsilon(z / math.sqrt(rounds), delta)
    spent = accountant.epsilon({z: rounds}, delta)
    assert exact <= spent <= 1.15 * exact
    assert spent <= classical_rdp_bound(z, rounds, delta)


def test_it_composes_rounds_with_different_multipliers():
    # Gaussian RDP is linear in 1/z^2: 10 rounds at z=1 and 10 at z=2 equal 20 rounds at z = sqrt(8/5).
    mixed = accountant.epsilon({1.0: 10, 2.0: 10}, 1e-5)
    assert mixed == pytest.approx(accountant.epsilon({math.sqrt(8 / 5): 20}, 1e-5), rel=1e-2)
    assert accountant.epsilon({2.0: 10}, 1e-5) < mixed < accountant.epsilon({1.0: 20}, 1e-5)


def test_it_grows_with_rounds_and_shrinks_with_noise():
    by_rounds = [accountant.epsilon({1.2: t}, 1e-5) for t in (1, 2, 5, 20, 100)]
    assert by_rounds == sorted(by_rounds) and len(set(by_rounds)) == 5
    by_noise = [accountant.epsilon({z: 20}, 1e-5) for z in (0.5, 1.0, 2.0, 8.0)]
    assert by_noise == sorted(by_noise, reverse=True)


def test_it_is_zero_without_rounds_and_infinite_with_a_noiseless_one():
    assert accountant.epsilon({}, 1e-5) == 0.0
    assert accountant.epsilon({1.0: 0}, 1e-5) == 0.0
    assert accountant.epsilon({0.0: 1, 1.0: 5}, 1e-5) == math.inf
    with pytest.raises(ValueError):
        accountant.epsilon({1.0: 1}, 0.0)
    with pytest.raises(ValueError):
        accountant.epsilon({1.0: -1}, 1e-5)


def test_it_counts_the_rounds_a_target_still_allows():
    ledger = {1.5: 4}
    left = accountant.rounds_within(ledger, 1.5, 1e-5, 10.0, cap=10_000)
    assert left > 0
    assert accountant.epsilon_after(ledger, 1.5, 1e-5, more=left) <= 10.0
    assert accountant.epsilon_after(ledger, 1.5, 1e-5, more=left + 1) > 10.0
    assert accountant.rounds_within(ledger, 1.5, 1e-5, 10.0, cap=3) == min(3, left)
    assert accountant.rounds_within(ledger, 1.5, 1e-5, accountant.epsilon(ledger, 1e-5), cap=100) == 0
    assert accountant.rounds_within({}, 0.0, 1e-5, 10.0, cap=100) == 0
