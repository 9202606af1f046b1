"""Settings describe themselves: one spelling of types, defaults, descriptions."""

from tuneforge.describe import describe_fields


def test_settings_describe_themselves_with_one_spelling_of_types():
    from tuneforge.plugins.lora import LoraStrategy

    described = describe_fields(LoraStrategy.Settings)
    assert described["rank"]["type"] == "int" and described["rank"]["default"] == 8
    assert described["merge_export"]["type"] == "bool"
    assert described["target_modules"]["type"] == "list[str] | Literal['all-linear'] | None"
    assert all(field["description"] for field in described.values())
