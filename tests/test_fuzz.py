"""Property-based fuzzing of lstm_ext.LSTM and the op (hypothesis).

Valid configurations, with non-contiguous, transposed, expanded and sliced
inputs and states and weights that are views, must match nn.LSTM; invalid
ones must raise a Python exception. Every case runs in a worker process: a
crash or a hang fails that case instead of killing the test run, and the
cases after it run in a new process.
Examples are derandomized, so CI tries the same cases each time.
"""

import concurrent.futures
import multiprocessing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzz_cases as fc



def fuzz(examples):
    return settings(max_examples=examples, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


class Worker:
    """Runs each case in a spawned process, the same one while it lives; a
    crash or a hang fails that case, and the next case gets a new process."""

    def __init__(self):
        self._pool = None

    def run(self, fn, case):
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=context)
        try:
            return self._pool.submit(fn, case).result(timeout=120)
        except concurrent.futures.process.BrokenProcessPool:
            self._discard()
            pytest.fail(f"the worker process died (a crash) on {case}")
        except TimeoutError:
            self._discard()
            pytest.fail(f"the worker process hung on {case}")

    def close(self):
        if self._pool is not None:
            self._pool.shutdown()

    def _discard(self):
        for process in multiprocessing.active_children():
            process.kill()
        self._pool.shutdown(cancel_futures=True)
        self._pool = None


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.close()


@st.composite
def module_cases(draw, mutation=st.just(""), split=st.just(-1),
                 dtype=st.sampled_from(["float32", "float64"]), weight_drop=st.just(0.0),
                 recurrent_dropout=st.just(0.0), zoneout=st.just((0.0, 0.0)),
                 layer_norm=st.just(False)):
    split = draw(split)
    # Split by hidden units, a step is cut in pieces of 64 units: H > 64 for two.
    H = draw(st.integers(1, 6) if split != 1 else st.sampled_from([65, 100, 130]))
    return fc.ModuleCase(
        layers=draw(st.integers(1, 3)), bidirectional=draw(st.booleans()),
        bias=draw(st.booleans()), proj=draw(st.integers(0, H - 1)),
        batch_first=draw(st.booleans()),
        kind=draw(st.sampled_from(["padded", "packed", "sorted", "unbatched"])),
        T=draw(st.integers(1, 5)), B=draw(st.integers(1, 4)), I=draw(st.integers(1, 5)), H=H,
        dtype=draw(dtype), native=draw(st.booleans()), hx=draw(st.booleans()),
        layout=draw(st.sampled_from(fc.LAYOUTS)), weight_views=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)), mutation=draw(mutation), split=split,
        weight_drop=draw(weight_drop), recurrent_dropout=draw(recurrent_dropout),
        **dict(zip(("zoneout_hidden", "zoneout_cell"), draw(zoneout))),
        layer_norm=draw(layer_norm),
    )


@fuzz(200)
@given(case=module_cases(split=st.sampled_from([-1, 0, 1]),
                         dtype=st.sampled_from(sorted(fc.DTYPES))))
def test_valid_configurations_match_nn_lstm(worker, case):
    worker.run(fc.check_valid, case)


@fuzz(60)
@given(case=module_cases(split=st.sampled_from([-1, 0, 1]),
                         dtype=st.sampled_from(sorted(fc.DTYPES)),
                         weight_drop=st.sampled_from([0.25, 0.5])))
def test_weight_drop_matches_nn_lstm_on_masked_weights(worker, case):
    worker.run(fc.check_weight_drop, case)


@fuzz(60)
@given(case=module_cases(split=st.sampled_from([-1, 0, 1]),
                         dtype=st.sampled_from(sorted(fc.DTYPES)),
                         recurrent_dropout=st.sampled_from([0.25, 0.5])))
def test_recurrent_dropout_matches_the_cell_loop(worker, case):
    worker.run(fc.check_cell_loop_options, case)


@fuzz(60)
@given(case=module_cases(split=st.sampled_from([-1, 0, 1]),
                         dtype=st.sampled_from(sorted(fc.DTYPES)),
                         recurrent_dropout=st.sampled_from([0.0, 0.25]),
                         zoneout=st.sampled_from([(0.3, 0.0), (0.0, 0.3), (0.25, 0.5)])))
def test_zoneout_matches_the_cell_loop(worker, case):
    worker.run(fc.check_cell_loop_options, case)


@fuzz(60)
@given(case=module_cases(split=st.sampled_from([-1, 0, 1]),
                         dtype=st.sampled_from(["float32", "float64"]),
                         zoneout=st.sampled_from([(0.0, 0.0), (0.25, 0.5)]),
                         layer_norm=st.just(True)))
def test_layer_norm_matches_the_cell_loop(worker, case):
    worker.run(fc.check_cell_loop_options, case)


@fuzz(60)
@given(case=module_cases(split=st.sampled_from([-1, 0, 1]),
                         dtype=st.sampled_from(sorted(fc.DTYPES))))
def test_backward_groups_match_problems_alone(worker, case):
    worker.run(fc.check_grouped_backward, case)


@fuzz(100)
@given(case=module_cases(split=st.sampled_from([-1, 0, 1]),
                         dtype=st.sampled_from(sorted(fc.DTYPES))))
def test_decode_calls_match_nn_lstm(worker, case):
    worker.run(fc.check_decode, case)


@fuzz(100)
@given(case=module_cases())
def test_forward_mode_matches_nn_lstm(worker, case):
    worker.run(fc.check_forward_mode, case)


@fuzz(150)
@given(case=module_cases(mutation=st.sampled_from(fc.MODULE_MUTATIONS)))
def test_invalid_module_input_raises(worker, case):
    worker.run(fc.check_invalid_module_input, case)


@st.composite
def op_cases(draw):
    argument = draw(st.sampled_from(fc.OP_ARGUMENTS))
    kind = "batch_sizes" if argument == "batch_sizes" else "tensor"
    return fc.OpCase(
        rows_per_step=tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=5))),
        I=draw(st.integers(1, 4)), H=draw(st.integers(1, 5)), proj=draw(st.integers(0, 2)),
        argument=argument, mutation=draw(st.sampled_from(fc.OP_MUTATIONS[kind])),
        seed=draw(st.integers(0, 2**16)),
    )


@fuzz(200)
@given(case=op_cases())
def test_invalid_op_arguments_raise(worker, case):
    worker.run(fc.check_invalid_op_arguments, case)


@fuzz(50)
@given(case=module_cases())
def test_nan_and_inf_propagate_like_nn_lstm(worker, case):
    worker.run(fc.check_nonfinite_propagates_like_nn_lstm, case)
