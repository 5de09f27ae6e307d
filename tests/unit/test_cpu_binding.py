"""CPU replicas' OpenMP core binding is mapped onto cores that exist."""

from cluster.replica.actor import fit_cpu_binding


def test_core_slots_beyond_the_real_cores_wrap_onto_usable_ones():
    assert fit_cpu_binding("0|1|2", cores=[0, 1]) == "0|1|0"


def test_a_binding_within_the_usable_cores_is_unchanged():
    assert fit_cpu_binding("0,1|2,3", cores=[0, 1, 2, 3]) == "0,1|2,3"


def test_ranges_are_expanded_and_wrapped():
    assert fit_cpu_binding("0-3", cores=[4, 5]) == "4,5,4,5"


def test_vllm_keywords_pass_through():
    assert fit_cpu_binding("auto", cores=[0]) == "auto"
