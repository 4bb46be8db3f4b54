"""Models are untrusted input: a mutated real model ends in a named InferError or a clean compile.

Each case compiles in a worker process (tests/fuzzing.py), so a crash is a failed case rather
than a dead test run. Deterministic here (time-boxed); `python tools/fuzz.py` runs longer with
fresh seeds.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzzing import COMPILED, MUTATIONS, REFUSED, SEEDS, Worker, mutant

CASES = 60
CASE_TIMEOUT_S = 300.0
# A compile of these models peaks near 1 GiB, tensors are capped at 256 MiB (TENSOR_CAP_BYTES):
# past this, some cap did not hold.
MAX_WORKER_RSS_BYTES = 2 << 30


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    w = Worker()
    yield w
    w.close()


@settings(
    max_examples=CASES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    seed_model=st.sampled_from(sorted(SEEDS)),
    mutation=st.sampled_from(sorted(MUTATIONS)),
    seed=st.integers(0, 2**32 - 1),
)
def test_a_mutated_model_is_refused_by_name_or_compiles(
    worker: Worker, seed_model: str, mutation: str, seed: int
) -> None:
    outcome = worker.run(mutant(seed_model, mutation, seed), CASE_TIMEOUT_S)
    assert outcome.kind in (COMPILED, REFUSED), (
        f"{seed_model} / {mutation} / seed {seed}: {outcome.kind}: {outcome.detail}"
    )
    assert outcome.peak_rss_bytes < MAX_WORKER_RSS_BYTES, (seed_model, mutation, seed)


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_every_mutation_on_the_real_silero_model(worker: Worker, mutation: str) -> None:
    outcome = worker.run(mutant("silero_vad", mutation, 7), CASE_TIMEOUT_S)
    assert outcome.kind in (COMPILED, REFUSED), f"{mutation}: {outcome.kind}: {outcome.detail}"
