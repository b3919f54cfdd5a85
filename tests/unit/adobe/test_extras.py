"""Connection extras validated with pydantic (include/triggerflow/adobe/extras.py)."""

from __future__ import annotations

import pytest

from include.triggerflow.adobe.extras import ExtrasError, ImsExtras, TriggersExtras


@pytest.mark.parametrize(
    ("model", "extra", "message"),
    [
        (TriggersExtras, {"page_limt": 5}, "extra.page_limt is not a setting of an Adobe trigger source connection "
         "(conn_type http); did you mean 'page_limit'?"),
        (ImsExtras, {"scope": "openid"}, "extra.scope is not a setting of an Adobe IMS connection (conn_type http); "
         "did you mean 'scopes'?"),
        (TriggersExtras, {"zzz": 1}, "extra.zzz is not a setting of an Adobe trigger source connection (conn_type http)"),
        (TriggersExtras, {"kind": "webhook"}, "extra.kind 'webhook' is not one of ('journal', 'pipeline')"),
        (TriggersExtras, {"reset": "newest"}, "extra.reset must be 'earliest' or 'latest', not 'newest'"),
        (TriggersExtras, {"page_size": 2.5}, "extra.page_size must be a positive integer, got 2.5"),
        (TriggersExtras, {"partitions": True}, "extra.partitions must be a positive integer, got True"),
        (TriggersExtras, {"read_timeout_s": "soon"}, "extra.read_timeout_s must be a positive number, got 'soon'"),
        (ImsExtras, {"auth_type": "basic"}, "extra.auth_type 'basic' is not one of ('oauth', 'jwt')"),
        (ImsExtras, {"max_answer_bytes": 0}, "extra.max_answer_bytes must be a positive whole number, got 0"),
        (ImsExtras, {"request_deadline_s": float("nan")}, "extra.request_deadline_s must be a positive number, got nan"),
    ],
)
def test_unusable_extras_name_the_key(model: type[TriggersExtras] | type[ImsExtras], extra: dict, message: str) -> None:
    with pytest.raises(ExtrasError) as info:
        model.parse(extra)
    assert str(info.value) == message


def test_unknown_key_without_a_close_match_gets_no_hint() -> None:
    with pytest.raises(ExtrasError) as info:
        TriggersExtras.parse({"zzz": 1})
    assert "did you mean" not in str(info.value)


def test_values_are_coerced_like_json_strings_and_defaults_fill_the_rest() -> None:
    extras = TriggersExtras.parse({"page_limit": "25", "kind": "pipeline", "idle_stop_s": None})
    assert (extras.page_limit, extras.kind, extras.max_tries) == (25, "pipeline", 4)
    # a key left out gives the caller's default, an explicit null stays None
    assert extras.value("idle_stop_s", 30.0) is None
    assert extras.value("read_timeout_s", 10.0) == 10.0


def test_both_kinds_keys_are_accepted_so_switching_kind_alone_switches_the_source() -> None:
    extras = TriggersExtras.parse({"kind": "journal", "consumer": "c-{env}", "page_limit": 5, "page_size": 10})
    assert extras.kind == "journal" and extras.consumer == "c-{env}"


def test_ims_auth_type_is_case_insensitive_and_blank_means_oauth() -> None:
    assert ImsExtras.parse({"auth_type": " JWT "}).auth_type == "jwt"
    assert ImsExtras.parse({"auth_type": ""}).auth_type == "oauth"
    assert ImsExtras.parse({}).auth_type == "oauth"


def test_the_status_documents_keepalive_thresholds_are_settings_of_the_source_connection() -> None:
    # status/settings.py reads them from adobe_triggers: the source hook must not refuse them
    from include.triggerflow.status.settings import keepalive_thresholds

    extra = {"kind": "journal", "keepalive_warning_reads": 5, "keepalive_warning_age_s": 60}
    TriggersExtras.parse(extra)
    thresholds = keepalive_thresholds(extra)
    assert (thresholds.reads, thresholds.age_s) == (5, 60)
