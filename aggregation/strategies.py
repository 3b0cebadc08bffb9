"""Aggregation strategies as pure torch functions. Imports no Django: the site agent reuses this module.

An update is a pair ``(tensors, weight)``: ``tensors`` maps names to float32 tensors and may be lazy
(`consortium.federated.codec.LazyTensors` reads a stored safetensors file one tensor at a time); ``weight`` is
the site's ``num_examples``. Every strategy returns new float32 tensors and never holds N copies of
the model: FedAvg streams update after update into one accumulator; the robust strategies walk the
model chunk by chunk, holding N chunks (about one model in all) at a time.

`aggregate` also reports what each update counted for (`Weighting`): the num_examples share under
FedAvg, 1/n under DP-FedAvg, 1 or 0 under Krum, nothing (None) under the coordinate-wise statistics.
That report is defined here, beside the arithmetic it describes, so provenance cannot drift from it.

Each function matches Flower's implementation of the same strategy (flwr 1.42, tested against it).
"""

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache, wraps
from math import sqrt
from typing import Any, NamedTuple

import torch

from aggregation import privacy

Tensors = Mapping[str, torch.Tensor]
Update = tuple[Tensors, float]
State = dict[str, torch.Tensor]

# Elements per chunk across all N updates of the chunked strategies: 4 Mi floats = 16 MiB of buffer,
# capped at one model's size so that peak memory stays under 3x one model.
_CHUNK_BUDGET = 1 << 22
_MIN_CHUNK = 1024


# --- helpers ------------------------------------------------------------------------------------


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread, restoring the previous count afterwards.

    Aggregation is thousands of small memory-bound operations. With OpenMP's fork/join per operation, a
    second thread gains little, and when the other core is busy (a Celery worker beside the web server)
    every operation waits for the descheduled thread: measured 10-20x slower on a 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _single_threaded(function: Callable) -> Callable:
    @wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _one_thread():
            return function(*args, **kwargs)
    return wrapper


def _release(tensors: Tensors, name: str, start: int = 0, stop: int | None = None) -> None:
    """Let a lazy mapping drop the pages it mapped for us; plain dicts have nothing to drop."""
    release = getattr(tensors, "release", None)
    if release is not None:
        release(name, start, stop)


def _check_weight(weight: float) -> float:
    if not weight > 0:
        raise ValueError(f"An update's weight (num_examples) must be positive, not {weight!r}.")
    return float(weight)


def _check_names(expected: Iterable[str], tensors: Tensors) -> None:
    if set(expected) != set(tensors):
        raise ValueError("Updates disagree on tensor names; the codec should have refused one of them.")


def _as_list(updates: Iterable[Update]) -> list[Update]:
    listed = list(updates)
    if not listed:
        raise ValueError("There are no updates to aggregate.")
    for tensors, weight in listed:
        _check_weight(weight)
        _check_names(listed[0][0], tensors)
    return listed


def _chunks(updates: Sequence[Update], name: str) -> Iterable[tuple[slice, torch.Tensor]]:
    """Yield (slice of the flattened tensor, N x chunk float32 stack) for one tensor name.

    The stack buffer is reused between chunks, and each update's pages are released once copied."""
    numel = updates[0][0][name].numel()
    n = len(updates)
    size = max(_MIN_CHUNK, min(_CHUNK_BUDGET // n, max(1, numel // n)))
    buffer = torch.empty((n, min(size, numel)), dtype=torch.float32)
    for start in range(0, numel, size):
        stop = min(numel, start + size)
        stack = buffer[:, : stop - start]
        for row, (tensors, _) in zip(stack, updates, strict=True):
            row.copy_(tensors[name].reshape(-1)[start:stop])
            _release(tensors, name, start, stop)
        yield slice(start, stop), stack


# --- FedAvg -------------------------------------------------------------------------------------


@_single_threaded
def fedavg(updates: Iterable[Update]) -> dict[str, torch.Tensor]:
    """Weighted average of the updates, weighted by num_examples (McMahan et al. 2017; Flower `aggregate`).

    Streaming: one pass over `updates`, one float32 accumulator of model size, and at most one of an
    update's tensors mapped at a time, so memory is O(model), whatever the number of sites. As in
    Flower, each update is scaled by its weight in float32 and the sum is divided by the total weight.
    """
    accumulator: dict[str, torch.Tensor] | None = None
    total = 0.0
    for tensors, weight in updates:
        weight = _check_weight(weight)
        if accumulator is None:
            accumulator = {name: torch.zeros(tensor.shape, dtype=torch.float32) for name, tensor in tensors.items()}
        _check_names(accumulator, tensors)
        for name, out in accumulator.items():
            out.add_(tensors[name], alpha=weight)
            _release(tensors, name)
        total += weight
    if accumulator is None:
        raise ValueError("There are no updates to aggregate.")
    for out in accumulator.values():
        out.div_(total)
    return accumulator


# --- Server-side adaptive optimisers (Reddi et al. 2021, "Adaptive Federated Optimization") -------


def _second_moment(rule: str, old: torch.Tensor | None, delta: torch.Tensor, beta_2: float) -> torch.Tensor:
    """v_t for Adam (EMA of delta^2), Yogi (sign-controlled additive) or Adagrad (running sum)."""
    squared = delta * delta
    if old is None:
        old = torch.zeros_like(delta)
    if rule == "adam":
        return squared.mul_(1 - beta_2).add_(old, alpha=beta_2)
    if rule == "yogi":
        sign = torch.sign(old - squared)
        return squared.mul_(sign).mul_(-(1 - beta_2)).add_(old)
    return squared.add_(old)


@_single_threaded
def _server_step(current: Tensors, averaged: dict[str, torch.Tensor], state: Mapping[str, torch.Tensor], *,
                 rule: str, eta: float, beta_1: float, beta_2: float, tau: float) -> tuple[dict, State]:
    """One FedOpt step on the pseudo-gradient delta = averaged - current, as Flower's FedOpt subclasses.

    `state` holds ``m/<name>``, ``v/<name>`` and ``step`` (server rounds done). Like Flower, FedAdam's
    bias correction uses exponent t + 1 for the t-th round (Flower passes server_round + 1.0)."""
    step = int(state["step"]) + 1 if "step" in state else 1
    eta_t = eta * sqrt(1 - beta_2 ** (step + 1)) / (1 - beta_1 ** (step + 1)) if rule == "adam" else eta
    new_state: State = {"step": torch.tensor(step, dtype=torch.int64)}
    for name, delta in averaged.items():
        base = current[name].to(torch.float32)
        delta.sub_(base)
        momentum = delta * (1 - beta_1)
        if f"m/{name}" in state:
            momentum.add_(state[f"m/{name}"], alpha=beta_1)
        second = _second_moment(rule, state.get(f"v/{name}"), delta, beta_2)
        # Reuse the pseudo-gradient's buffer for the new weights: base + eta_t * m / (sqrt(v) + tau).
        torch.sqrt(second, out=delta).add_(tau)
        torch.div(momentum, delta, out=delta).mul_(eta_t).add_(base)
        new_state[f"m/{name}"], new_state[f"v/{name}"] = momentum, second
        _release(current, name)
    return averaged, new_state


# Flower's defaults for the server-side optimisers: the one table that `fedadam` & co. and `STRATEGIES` read.
SERVER_OPTIMISER_DEFAULTS: dict[str, dict[str, float]] = {
    "adam": {"eta": 0.1, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-9},
    "yogi": {"eta": 0.01, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3},
    "adagrad": {"eta": 0.1, "beta_1": 0.0, "beta_2": 0.0, "tau": 1e-9},
}


def _with_defaults(rule: str, options: Mapping[str, float]) -> dict[str, float]:
    defaults = SERVER_OPTIMISER_DEFAULTS[rule]
    unknown = set(options) - set(defaults)
    if unknown:
        raise TypeError(f"Unknown {rule} option(s) {sorted(unknown)}; expected some of {sorted(defaults)}.")
    return {**defaults, **options}


def fedadam(current: Tensors, updates: Iterable[Update], state: Mapping[str, torch.Tensor],
            **options: float) -> tuple[dict, State]:
    """FedAdam: Adam on the server over the pseudo-gradient fedavg(updates) - current (Flower `FedAdam`).
    `options` (eta, beta_1, beta_2, tau) override `SERVER_OPTIMISER_DEFAULTS`.

    Returns the new weights and the new optimiser state, which the caller persists per study."""
    return _server_step(current, fedavg(updates), state, rule="adam", **_with_defaults("adam", options))


def fedyogi(current: Tensors, updates: Iterable[Update], state: Mapping[str, torch.Tensor],
            **options: float) -> tuple[dict, State]:
    """FedYogi: v grows or shrinks additively by (1 - beta_2) delta^2 (Flower `FedYogi`; no bias correction)."""
    return _server_step(current, fedavg(updates), state, rule="yogi", **_with_defaults("yogi", options))


def fedadagrad(current: Tensors, updates: Iterable[Update], state: Mapping[str, torch.Tensor],
               **options: float) -> tuple[dict, State]:
    """FedAdagrad: v accumulates delta^2 over rounds (Flower `FedAdagrad`, which fixes beta_1 = 0)."""
    return _server_step(current, fedavg(updates), state, rule="adagrad", **_with_defaults("adagrad", options))


# --- Coordinate-wise robust statistics ------------------------------------------------------------


def _batcher_network(n: int) -> list[tuple[int, int]]:
    """Batcher's odd-even merge sort comparators for n wires (min to the lower wire).

    Built for the next power of two and pruned to n: padding wires hold +inf, which never moves to a
    lower wire, so every comparator touching a padding wire is a no-op."""
    size = 1
    while size < n:
        size *= 2
    comparators = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        comparators.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return [(a, b) for a, b in comparators if b < n]


@lru_cache(maxsize=64)
def _selection_network(n: int, low: int, high: int) -> tuple[tuple[int, int], ...]:
    """The comparators of the sorting network that wires [low, high) of the sorted output depend on."""
    needed, kept = set(range(low, high)), []
    for a, b in reversed(_batcher_network(n)):
        if a in needed or b in needed:
            kept.append((a, b))
            needed.update((a, b))
    return tuple(reversed(kept))


def _sorted_rows(stack: torch.Tensor, low: int, high: int) -> list[torch.Tensor]:
    """Rows low..high-1 of `stack` sorted along dim 0 (the others are scrambled), in place.

    A sorting network of elementwise min/max over N rows is several times faster than torch.sort
    along a short dimension, and needs one spare row."""
    rows, spare = list(stack), torch.empty_like(stack[0])
    for a, b in _selection_network(len(rows), low, high):
        torch.minimum(rows[a], rows[b], out=spare)
        torch.maximum(rows[a], rows[b], out=rows[b])
        rows[a], spare = spare, rows[a]
    return rows[low:high]


@_single_threaded
def _coordinatewise(updates: Iterable[Update], low_high: Callable[[int], tuple[int, int]]) -> dict:
    """Mean of the sorted values at ranks [low, high) of every coordinate, chunk by chunk."""
    listed = _as_list(updates)
    low, high = low_high(len(listed))
    result = {}
    for name, tensor in listed[0][0].items():
        out = torch.empty(tensor.shape, dtype=torch.float32)
        flat = out.view(-1)
        for where, stack in _chunks(listed, name):
            rows = _sorted_rows(stack, low, high)
            target = flat[where].copy_(rows[0])
            for row in rows[1:]:
                target.add_(row)
            if len(rows) > 1:
                target.div_(len(rows))
        result[name] = out
    return result


def median(updates: Iterable[Update]) -> dict[str, torch.Tensor]:
    """Coordinate-wise median, weights ignored (Yin et al. 2018; Flower `aggregate_median`).

    With an even number of sites it is the mean of the two middle values, as numpy's median."""
    return _coordinatewise(updates, lambda n: ((n - 1) // 2, n // 2 + 1))


def trimmed_mean(updates: Iterable[Update], *, fraction: float) -> dict[str, torch.Tensor]:
    """Coordinate-wise mean after cutting int(fraction * n) values at each end (Flower `aggregate_trimmed_avg`)."""
    if not 0.0 <= fraction < 0.5:
        raise ValueError("The trimmed fraction must be in [0, 0.5).")
    return _coordinatewise(updates, lambda n: (int(fraction * n), n - int(fraction * n)))


# --- Krum and multi-Krum (Blanchard et al. 2017) --------------------------------------------------


@_single_threaded
def pairwise_sq_distances(updates: Sequence[Update]) -> torch.Tensor:
    """N x N squared L2 distances between whole updates, from a Gram matrix built chunk by chunk.

    ||a - b||^2 = ||a||^2 + ||b||^2 - 2 a.b. Each chunk is centred on its mean across updates first:
    distances do not change, and the cancellation that ruins the formula when updates are close to
    each other (they usually are: all start from the same global model) mostly goes away."""
    gram = torch.zeros((len(updates), len(updates)), dtype=torch.float64)
    for name in updates[0][0]:
        for _, stack in _chunks(updates, name):
            stack.sub_(stack.mean(dim=0))
            gram.add_((stack @ stack.T).to(torch.float64))
    norms = gram.diagonal()
    distances = (norms[:, None] + norms[None, :] - 2 * gram).clamp_(min=0)
    distances.fill_diagonal_(0)
    return distances


def krum_scores(distances: torch.Tensor, num_byzantine: int) -> torch.Tensor:
    """Each update's score: the sum of its n - f - 2 smallest distances to the others (at least one)."""
    n = distances.shape[0]
    closest = max(1, n - num_byzantine - 2)
    # Sorting a row puts the update itself (distance 0) first, which Flower skips in the same way.
    return distances.sort(dim=1).values[:, 1 : closest + 1].sum(dim=1)


def krum_select(updates: Sequence[Update], *, num_byzantine: int, num_selected: int = 1) -> list[int]:
    """The indices (ascending) of the updates Krum (num_selected=1) or multi-Krum keeps: the best-scored ones."""
    if num_byzantine < 0 or not 1 <= num_selected <= len(updates):
        raise ValueError(f"Krum needs 0 <= num_byzantine and 1 <= num_selected <= {len(updates)} sites.")
    scores = krum_scores(pairwise_sq_distances(updates), num_byzantine)
    if num_selected == 1:
        # Two mutual nearest neighbours tie exactly in theory; rounding differs between the Gram matrix
        # and direct differences, so take the lowest index among near-ties, as numpy's argmin does on exact ties.
        return [int((scores <= scores.min() * (1 + 1e-6) + 1e-30).nonzero()[0])]
    return sorted(torch.argsort(scores, stable=True)[:num_selected].tolist())


def krum(updates: Iterable[Update], *, num_byzantine: int, num_selected: int = 1) -> dict[str, torch.Tensor]:
    """Krum (num_selected=1): the update closest to its n - f - 2 nearest neighbours; multi-Krum
    (num_selected=m > 1): the num_examples-weighted mean of the m best-scored updates (Flower `aggregate_krum`).

    Reads every update twice: once for the Gram matrix, once to average the selected ones."""
    listed = _as_list(updates)
    return _krum_combine(listed, krum_select(listed, num_byzantine=num_byzantine, num_selected=num_selected),
                         multi=num_selected > 1)


def _krum_combine(listed: list[Update], chosen: list[int], *, multi: bool) -> dict[str, torch.Tensor]:
    if not multi:
        return fedavg([(listed[chosen[0]][0], 1.0)])  # an exact copy of the chosen update, as Flower's Krum
    return fedavg(listed[i] for i in chosen)


# --- What each update counted for ------------------------------------------------------------------


@dataclass(frozen=True)
class Weighting:
    """How much each update, in the order given, counted in the new model as the strategy applied it.

    `weights[i]` is a fraction of the combination (they sum to 1), or None when the strategy does not
    weight updates at all (coordinate-wise median and trimmed mean); `note` says which rule applied."""

    weights: tuple[float | None, ...]
    note: str


def example_weights(declared: Sequence[float]) -> tuple[float, ...]:
    """Each update's share of a num_examples-weighted mean, n_i / sum(n), exactly as `fedavg` weights it.
    Over the updates actually combined, so an excluded site's share is renormalised over the others."""
    total = sum(_check_weight(n) for n in declared)
    return tuple(float(n) / total for n in declared)


def _selected_weights(declared: Sequence[float], chosen: list[int]) -> tuple[float, ...]:
    shares = dict(zip(chosen, example_weights([declared[i] for i in chosen]), strict=True))
    return tuple(shares.get(i, 0.0) for i in range(len(declared)))


# --- Registry -------------------------------------------------------------------------------------


def _dp_on(settings: Mapping[str, Any]) -> bool:
    return float(settings.get("dp_noise_multiplier") or 0.0) > 0


def _averaged(current: Tensors, updates: list[Update], settings: Mapping[str, Any]) -> tuple[dict, Weighting]:
    """FedAvg, or DP-FedAvg when the protocol sets a noise multiplier (central DP at the server), with
    the weights each applies. DP noise is always fresh from the OS (`privacy.gaussian_noise`): no
    setting can seed it, since a known seed lets anyone subtract the noise from the published model."""
    if not _dp_on(settings):
        weighting = Weighting(example_weights([weight for _, weight in updates]),
                              "Weighted by the declared num_examples, renormalised over the updates combined.")
        return fedavg(updates), weighting
    weighting = Weighting(tuple(1.0 / len(updates) for _ in updates),
                          "DP-FedAvg: every clipped update counts equally (1/n), whatever its num_examples, so "
                          "that no one site can move the model by more than the clipping norm over n.")
    return privacy.dp_fedavg(current, updates, clip_norm=float(settings.get("dp_clip_norm", 1.0)),
                             noise_multiplier=float(settings["dp_noise_multiplier"])), weighting


def _robust_only(settings: Mapping[str, Any]) -> None:
    if _dp_on(settings):
        raise ValueError("Central differential privacy is defined here for averaging strategies only "
                         "(fedavg, fedprox, fedadam, fedyogi, fedadagrad).")


class Aggregated(NamedTuple):
    """A strategy's outcome: the new weights, the server state to persist, and what each update counted for."""

    weights: dict[str, torch.Tensor]
    state: State
    weighting: Weighting


def _optimiser(rule: str) -> Callable[..., Aggregated]:
    defaults = SERVER_OPTIMISER_DEFAULTS[rule]

    def run(current: Tensors, updates: list[Update], state: Mapping, settings: Mapping) -> Aggregated:
        options = {key: float(settings.get(key, value)) for key, value in defaults.items() if key != "eta"}
        eta = float(settings.get("server_learning_rate") or defaults["eta"])
        averaged, weighting = _averaged(current, updates, settings)
        weights, new_state = _server_step(current, averaged, state, rule=rule, eta=eta, **options)
        note = f"{weighting.note} The server's {rule} step then moves the model towards that mean."
        return Aggregated(weights, new_state, Weighting(weighting.weights, note))
    return run


def _run_fedavg(current: Tensors, updates: list[Update], state: Mapping, settings: Mapping) -> Aggregated:
    weights, weighting = _averaged(current, updates, settings)
    return Aggregated(weights, dict(state), weighting)


def _unweighted(updates: list[Update], note: str) -> Weighting:
    return Weighting(tuple(None for _ in updates), note)


def _run_median(current: Tensors, updates: list[Update], state: Mapping, settings: Mapping) -> Aggregated:
    _robust_only(settings)
    note = "Coordinate-wise median: updates are not weighted and num_examples is not used."
    return Aggregated(median(updates), dict(state), _unweighted(updates, note))


def _run_trimmed(current: Tensors, updates: list[Update], state: Mapping, settings: Mapping) -> Aggregated:
    _robust_only(settings)
    fraction = float(settings.get("trim_fraction", 0.2))
    note = (f"Coordinate-wise trimmed mean ({fraction:g} cut at each end of every coordinate): updates are not "
            "weighted and num_examples is not used.")
    return Aggregated(trimmed_mean(updates, fraction=fraction), dict(state), _unweighted(updates, note))


def _run_krum(multi: bool) -> Callable[..., Aggregated]:
    def run(current: Tensors, updates: list[Update], state: Mapping, settings: Mapping) -> Aggregated:
        _robust_only(settings)
        listed, byzantine = _as_list(updates), int(settings.get("byzantine_sites", 0))
        # Multi-Krum averages the m = n - f best updates (Blanchard et al.'s choice).
        selected = max(1, len(listed) - byzantine) if multi else 1
        chosen = krum_select(listed, num_byzantine=byzantine, num_selected=selected)
        if multi:
            weighting = Weighting(_selected_weights([w for _, w in listed], chosen),
                                  f"Multi-Krum: the {selected} best-scored updates, weighted by their declared "
                                  "num_examples; the others count 0.")
        else:
            weighting = Weighting(tuple(1.0 if i in chosen else 0.0 for i in range(len(listed))),
                                  "Krum: the new model is a copy of the one selected update; the others count 0.")
        return Aggregated(_krum_combine(listed, chosen, multi=multi), dict(state), weighting)
    return run


StrategyFn = Callable[[Tensors, list[Update], Mapping[str, torch.Tensor], Mapping[str, Any]], Aggregated]

# Keys are studies.choices.Strategy values. FedProx differs from FedAvg only on the sites (the proximal term).
STRATEGIES: dict[str, StrategyFn] = {
    "fedavg": _run_fedavg,
    "fedprox": _run_fedavg,
    "fedadam": _optimiser("adam"),
    "fedyogi": _optimiser("yogi"),
    "fedadagrad": _optimiser("adagrad"),
    "median": _run_median,
    "trimmed_mean": _run_trimmed,
    "krum": _run_krum(multi=False),
    "multi_krum": _run_krum(multi=True),
}


def aggregate(name: str, current: Tensors, updates: Iterable[Update], state: Mapping[str, torch.Tensor],
              settings: Mapping[str, Any]) -> Aggregated:
    """Run the study's strategy: (new weights, new server state to persist as safetensors, the weight each
    update actually counted for, in the order given). State is unchanged for stateless strategies.

    `settings` may hold server_learning_rate (adaptive strategies; falsy -> Flower's default eta), beta_1,
    beta_2, tau, trim_fraction, byzantine_sites, dp_noise_multiplier (0 = off) and dp_clip_norm. Nothing
    seeds the DP noise: it comes from the operating system every time."""
    try:
        strategy = STRATEGIES[name]
    except KeyError:
        raise ValueError(f"Unknown strategy {name!r}; expected one of {sorted(STRATEGIES)}.") from None
    return strategy(current, _as_list(updates), state, settings)
