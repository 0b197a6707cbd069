"""The v2 codec answers every body with a request or a 400, never anything a client would see as a 500.

Bodies are generated from the protocol's own structure (inputs, shapes, datatypes, binary sizes,
parameters, outputs) and then pushed to the edges: numbers of hundreds of digits, shapes past int64,
nesting past the recursion limit, header lengths in other scripts' digits, and raw bytes.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.errors import ServiceError, status_for
from app.v2_protocol import parse_infer_request
from tests.fuzz_cases import count_fuzz_case

EXAMPLES = 2500
OUTPUT = "probabilities"

edge_integers = st.sampled_from([0, 1, 3, 227, 2**31, 2**32, 2**63, 2**64, -1, 10**40, 10**400])
numbers = st.one_of(
    st.integers(-(10**6), 10**6),
    edge_integers,
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
)
scalars = st.one_of(numbers, st.none(), st.text(max_size=8), st.sampled_from(["aGk=", "/9j/", "%%", ""]))
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=12,
)


def nested(value: Any, depth: int) -> Any:
    for _ in range(depth):
        value = [value]
    return value


tensor_inputs = st.fixed_dictionaries(
    {
        "name": st.one_of(st.sampled_from(["image", "x"]), json_values),
        "datatype": st.one_of(st.sampled_from(["FP32", "BYTES", "INT8", "fp32"]), json_values),
        "shape": st.one_of(st.lists(st.one_of(st.integers(0, 4), edge_integers), max_size=4), json_values),
    },
    optional={
        "data": st.one_of(
            st.builds(nested, st.lists(numbers, max_size=12), st.integers(0, 3)),
            st.builds(nested, st.lists(st.sampled_from(["aGk=", "/9j/4AAQ", "%%"]), max_size=4), st.integers(0, 2)),
            st.builds(nested, numbers, st.sampled_from([0, 1, 5, 1100])),
            json_values,
        ),
        "parameters": st.one_of(
            st.fixed_dictionaries({"binary_data_size": st.one_of(st.integers(-4, 64), edge_integers, json_values)}),
            json_values,
        ),
    },
)
documents = st.fixed_dictionaries(
    {"inputs": st.one_of(st.lists(tensor_inputs, min_size=1, max_size=3), json_values)},
    optional={
        "outputs": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {"name": st.one_of(st.just(OUTPUT), json_values)},
                    optional={
                        "parameters": st.dictionaries(
                            st.sampled_from(["classification", "binary_data"]), numbers, max_size=2
                        )
                    },
                ),
                max_size=2,
            ),
            json_values,
        ),
        "parameters": st.one_of(st.fixed_dictionaries({"binary_data_output": numbers}), json_values),
        "id": json_values,
    },
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """A body and its Inference-Header-Content-Length (None: a plain JSON request)."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=64)), draw(st.one_of(st.none(), st.text(max_size=4)))
    if draw(st.integers(0, 9)) == 0:
        # Nested past the recursion limit: a document inside ~1000 lists, or only the brackets.
        depth = draw(st.sampled_from([900, 1000, 5000]))
        brackets = "[" * depth + (json.dumps(draw(documents)) + "]" * depth if draw(st.booleans()) else "")
        return brackets.encode(), None
    header = json.dumps(draw(documents)).encode()
    binary = draw(st.binary(max_size=64))
    if not binary and draw(st.booleans()):
        return header, None
    length = draw(
        st.one_of(
            st.just(str(len(header))),
            st.integers(0, len(header) + len(binary) + 2).map(str),
            st.sampled_from(["\u00b2", "\u0663", "-1", "", " 1", "1" * 50]),
        )
    )
    return header + binary, length


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(requests())
def test_the_codec_answers_every_body_with_a_request_or_a_400(request: tuple[bytes, str | None]) -> None:
    count_fuzz_case("v2 codec")
    body, header_length = request
    try:
        parse_infer_request(body, header_length, OUTPUT)
    except ServiceError as error:
        assert status_for(error) == 400, error
