import textwrap

import pytest

from cluster.config import ConfigError, load_config
from cluster.router.policies import POLICIES


def test_no_config_serves_the_embedded_model_on_vllm():
    cfg = load_config()
    assert [m.name for m in cfg.models] == ["smollm2-135m-instruct"]
    assert cfg.models[0].engine == "vllm"
    assert cfg.models[0].source == "embedded:smollm2-135m-instruct"
    assert (cfg.router.grpc_port, cfg.router.http_port) == (50051, 8000)


def test_a_yaml_file_and_command_line_overrides_combine(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(
        textwrap.dedent(
            """
            models:
              - name: a
                engine: sim
                replicas: 2
            router:
              policy: round_robin
            """
        )
    )
    cfg = load_config(p, ["models.0.replicas=4", "router.http_port=9000"])
    assert cfg.models[0].replicas == 4
    assert cfg.router.http_port == 9000
    assert cfg.router.policy == "round_robin"


@pytest.mark.parametrize(
    ("override", "field", "words"),
    [
        ("models.0.replicas=-1", "models.0.replicas", "greater than or equal to 0"),
        ("models.0.tensor_parallel_size=0", "models.0.tensor_parallel_size", "greater than or equal to 1"),
        ("router.policy=fastest", "router.policy", "unknown policy 'fastest'"),
        ("models.0.engine=tgi", "models.0.engine", "'vllm' or 'sim'"),
        ("router.grpc_port=70000", "router.grpc_port", "less than or equal to 65535"),
        ("models.0.colour=red", "models.0.colour", "Extra inputs"),
    ],
)
def test_a_bad_field_gives_one_error_naming_it(override, field, words):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert f"'{field}'" in str(err.value)
    assert words in str(err.value)


def test_duplicate_model_names_are_rejected():
    with pytest.raises(ConfigError, match="duplicate model or adapter name"):
        load_config(overrides=["models.1.name=smollm2-135m-instruct"])


def test_a_missing_or_malformed_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(scalar)


def test_sim_shards_default_to_a_small_cpu_share_so_many_fit_one_node():
    cfg = load_config(overrides=["models.0.engine=sim"])
    assert cfg.models[0].shard_cpus < 1
    assert load_config().models[0].shard_cpus == 1.0


def test_the_config_accepts_every_registered_policy_and_names_them_when_refusing_one():
    for name in POLICIES:
        assert load_config(overrides=[f"router.policy={name}"]).router.policy == name
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=["router.policy=fastest"])
    assert "router.policy" in str(exc.value) and all(name in str(exc.value) for name in POLICIES)


def test_lora_settings_become_vllm_engine_args_and_explicit_engine_args_win() -> None:
    from cluster.engine.model_args import vllm_engine_args

    cfg = load_config(overrides=["models.0.lora={adapters: [{name: a, path: /x}], max_loras: 3, max_lora_rank: 32}"])
    assert vllm_engine_args(cfg.models[0]) == {"enable_lora": True, "max_loras": 3, "max_lora_rank": 32}
    cfg = load_config(overrides=["models.0.task=embed", "models.0.engine_args={runner: generate}"])
    assert vllm_engine_args(cfg.models[0]) == {"runner": "generate"}
    assert vllm_engine_args(load_config(overrides=["models.0.task=embed"]).models[0]) == {"runner": "pooling"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("models.0.lora={max_lora_rank: 12}", "models.0.lora.max_lora_rank"),
        ("models.0.lora={max_loras: 4, max_cpu_loras: 2}", "max_cpu_loras \\(2\\) must be >= max_loras \\(4\\)"),
        ("models.0.lora={adapters: [{name: a, path: /x}, {name: a, path: /y}]}", "duplicate adapter name"),
        ("models.0.lora={adapters: [{name: smollm2-135m-instruct, path: /x}]}", "duplicate model or adapter name"),
        ("models.0.lora={adapters: [{name: a}]}", "models.0.lora.adapters.0.path"),
        ("models.0.task=classify", "models.0.task"),
    ],
)
def test_a_bad_lora_or_task_setting_is_refused_naming_the_field(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])
