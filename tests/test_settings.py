"""Settings.from_mapping: defaults, one ConfigError per bad value naming its variable, a secret that never prints."""

import logging

import pytest

from recommender.errors import ConfigError
from recommender.events import EventKind
from recommender.settings import Secret, Settings, TrainingConfig
from tests.conftest import TEST_SECRET


def test_defaults_from_an_empty_mapping():
    # Act
    settings = Settings.from_mapping({})

    # Assert
    assert settings.event_store_url == "sqlite:///./data/events.sqlite3"
    assert settings.model_store_url == "file://./data/models"
    assert settings.shopify_api_secret is None
    assert settings.train_token is None
    assert settings.history_limit == 200
    assert settings.attribution_days == 7.0
    assert settings.training == TrainingConfig(
        factors=32, regularization=0.5, alpha=2.0, iterations=15, seed=42,
        event_weights={EventKind.VIEW: 1.0, EventKind.ADD_TO_CART: 4.0, EventKind.PURCHASE: 10.0},
    )


def test_empty_strings_fall_back_to_defaults():
    # Act
    settings = Settings.from_mapping({"ALS_FACTORS": "", "EVENT_STORE_URL": "", "SHOPIFY_API_SECRET": ""})

    # Assert
    assert settings.training.factors == 32
    assert settings.event_store_url == "sqlite:///./data/events.sqlite3"
    assert settings.shopify_api_secret is None


def test_values_are_cast(env):
    # Act
    settings = Settings.from_mapping({**env, "ALS_ALPHA": "0.5", "ALS_REGULARIZATION": "0", "HISTORY_LIMIT": "50"})

    # Assert
    assert settings.training.factors == 16
    assert settings.training.iterations == 10
    assert settings.training.alpha == 0.5
    assert settings.training.regularization == 0.0
    assert settings.history_limit == 50
    assert settings.shopify_api_secret.reveal() == TEST_SECRET
    assert settings.train_token.reveal() == "test-train-token"


@pytest.mark.parametrize("name,value", [
    ("ALS_FACTORS", "abc"),
    ("ALS_FACTORS", "0"),
    ("ALS_FACTORS", "1025"),
    ("ALS_FACTORS", "1.5"),
    ("ALS_ALPHA", "-1"),
    ("ALS_ALPHA", "0"),
    ("ALS_ALPHA", "nan"),
    ("ALS_REGULARIZATION", "-0.1"),
    ("ALS_ITERATIONS", "0"),
    ("TRAIN_SEED", "-3"),
    ("HISTORY_LIMIT", "10001"),
    ("EVENT_WEIGHTS", "bogus=1"),
    ("EVENT_WEIGHTS", "view=-1"),
    ("EVENT_WEIGHTS", "view"),
    ("EVENT_WEIGHTS", "view=heavy"),
    ("EVENT_STORE_URL", "mysql://x"),
    ("EVENT_STORE_URL", "postgresql:/db/events"),
    ("MODEL_STORE_URL", "s3://bucket/models"),
    ("MODEL_MEMORY_MIB", "0"),
    ("MODEL_MEMORY_MIB", "lots"),
    ("GATE_MAX_USERS", "0"),
    ("GATE_MAX_USERS", "many"),
    ("TRAIN_BUDGET_SECONDS", "-1"),
    ("TRAIN_BUDGET_SECONDS", "inf"),
    ("TRAIN_BUDGET_SECONDS", "25m"),
    ("GATE_TOLERANCE", "1"),  # a drop of 100%: every candidate would pass
    ("GATE_TOLERANCE", "-0.1"),
    ("TRUSTED_PROXIES", "11"),
    ("TRUSTED_PROXIES", "-1"),
    ("ATTRIBUTION_DAYS", "0"),
    ("ATTRIBUTION_DAYS", "366"),
    ("ATTRIBUTION_DAYS", "a week"),
    ("CONTROL_PERCENT", "51"),  # a control group larger than the model's share
    ("CONTROL_PERCENT", "-1"),
    ("CONTROL_PERCENT", "10%"),
])
def test_invalid_value_raises_config_error_naming_the_variable(name, value):
    # Act
    with pytest.raises(ConfigError) as raised:
        Settings.from_mapping({name: value})

    # Assert
    message = str(raised.value)
    assert message.startswith(name)
    assert repr(value) in message or name == "EVENT_WEIGHTS"


def test_event_weights_error_lists_the_known_kinds():
    # Act
    with pytest.raises(ConfigError) as raised:
        Settings.from_mapping({"EVENT_WEIGHTS": "bogus=1"})

    # Assert
    assert str(raised.value) == (
        "EVENT_WEIGHTS must look like 'view=1,add_to_cart=4,purchase=10' "
        "(kinds: view, add_to_cart, purchase), got 'bogus=1'"
    )


def test_als_factors_error_message_is_exact():
    # Act
    with pytest.raises(ConfigError) as raised:
        Settings.from_mapping({"ALS_FACTORS": "abc"})

    # Assert
    assert str(raised.value) == "ALS_FACTORS must be an integer from 1 to 1024, got 'abc'"


def test_event_weights_partial_override_keeps_the_other_defaults():
    # Act
    settings = Settings.from_mapping({"EVENT_WEIGHTS": " purchase = 25 , view=0"})

    # Assert
    assert settings.training.event_weights == {
        EventKind.VIEW: 0.0, EventKind.ADD_TO_CART: 4.0, EventKind.PURCHASE: 25.0,
    }


def test_settings_are_frozen(settings):
    # Act / Assert
    with pytest.raises(AttributeError):
        settings.history_limit = 1


def test_secret_never_appears_in_repr_str_or_fstrings(settings):
    # Act
    shown = [repr(settings), str(settings), f"{settings}", f"{settings!r}", f"{settings.shopify_api_secret}",
             "%s %r" % (settings, settings.shopify_api_secret), format(settings.shopify_api_secret)]

    # Assert
    for text in shown:
        assert TEST_SECRET not in text
        assert "test-train-token" not in text
    assert "shopify_api_secret=Secret('**********')" in repr(settings)
    assert str(settings.shopify_api_secret) == "Secret('**********')"
    assert settings.shopify_api_secret.reveal() == TEST_SECRET


def test_secret_never_appears_in_log_output(settings, caplog):
    # Arrange
    caplog.set_level(logging.DEBUG, logger="test_settings")
    log = logging.getLogger("test_settings")

    # Act
    log.info("starting with %s", settings)
    log.info("starting with %r", settings)
    log.debug("secret: %s token: %s", settings.shopify_api_secret, settings.train_token)
    log.warning(settings)

    # Assert
    assert len(caplog.records) == 4
    assert TEST_SECRET not in caplog.text
    assert "test-train-token" not in caplog.text
    assert caplog.text.count("Secret('**********')") == 8  # 3 settings x 2 secrets + 2 bare secrets


def test_secrets_compare_by_value_without_revealing_it():
    # Act / Assert
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert Secret("a") != "a"


def test_require_secret_returns_the_secret_when_set(settings):
    # Act
    secret = settings.require_secret()

    # Assert
    assert secret.reveal() == TEST_SECRET


@pytest.mark.parametrize("mapping", [{}, {"SHOPIFY_API_SECRET": ""}])
def test_require_secret_raises_config_error_naming_the_variable_when_unset(mapping):
    # Arrange
    settings = Settings.from_mapping(mapping)

    # Act / Assert
    with pytest.raises(ConfigError, match="^SHOPIFY_API_SECRET is not set"):
        settings.require_secret()


def test_model_memory_mib_is_unset_by_default_and_read_in_mib():
    assert Settings.from_mapping({}).model_memory_mib is None
    assert Settings.from_mapping({"MODEL_MEMORY_MIB": ""}).model_memory_mib is None
    assert Settings.from_mapping({"MODEL_MEMORY_MIB": "307.5"}).model_memory_mib == 307.5


def test_the_quality_gate_ranks_20000_customers_at_most_unless_told_otherwise():
    assert Settings.from_mapping({}).gate().max_users == 20_000
    assert Settings.from_mapping({"GATE_MAX_USERS": "500"}).gate().max_users == 500


def test_the_training_job_starts_shops_within_1500_seconds_unless_told_otherwise():
    assert Settings.from_mapping({}).train_budget_seconds == 1500.0  # of the deployed function's 1800 s timeout
    assert Settings.from_mapping({"TRAIN_BUDGET_SECONDS": "3000"}).train_budget_seconds == 3000.0
    assert Settings.from_mapping({"TRAIN_BUDGET_SECONDS": "0"}).train_budget_seconds == 0.0  # no budget


def test_a_gate_cap_below_the_customers_the_gate_needs_is_refused_naming_both():
    with pytest.raises(ConfigError) as raised:
        Settings.from_mapping({"GATE_MAX_USERS": "30", "GATE_MIN_USERS": "50"})

    assert "GATE_MAX_USERS (30) must be at least GATE_MIN_USERS (50)" in str(raised.value)
    assert Settings.from_mapping({"GATE_MAX_USERS": "50", "GATE_MIN_USERS": "50"}).gate().max_users == 50
