"""The request bodies' OpenAPI schemas state what the parameter validators check.

The bodies are the flows' own parameter models (``core.schemas``). Many of their checks are
validators with the spec's messages (``epochs must be between 1-1000``), which pydantic does
not put in the JSON schema, so the gateway's schema accepted bodies the gateway refuses.
:func:`request_model` gives each job a subclass whose schema states those checks with JSON
Schema keywords (OpenAPI 3.1 is JSON Schema 2020-12): ranges, enums, the symbol's form, and
rules between fields written as ``if``/``then`` (a strategy's parameters, the csv import's
fields). Validation is the parent's, with the same messages, and then the body is held to
that schema too: pydantic's lax mode takes ``false`` for 0 and ``"7"`` for 7, the schema
does not, and a body the schema refuses is refused (422 naming the field) instead of being
read as something the caller did not write. The parent models keep their plain schema for
the Prefect UI's forms.

Four rules compare two values, which JSON Schema cannot say. They are stated in the body's
description and, machine-readably, as ``x-cross-field-rules`` (``CROSS_FIELD_RULES``);
``tests/api/test_contract_fuzz.py`` holds its generated bodies to them.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError as SchemaViolation
from pydantic import BaseModel, ConfigDict, ModelWrapValidatorHandler, model_validator

from core.echo import shorten
from core.market import QUOTE_ASSETS, TIMEFRAMES
from core.schemas.analysis import (
    MAX_BULK_SYMBOLS,
    PREDICT_VERSION_PATTERN,
    BulkAnalysisParams,
    PredictPriceParams,
)
from core.schemas.backtest import STRATEGY_PARAMS, BacktestParameters, OptimizeParameters
from core.schemas.common import MODEL_TYPES
from core.schemas.market_data import IngestParameters
from core.schemas.model_backtest import MODEL_STRATEGY
from core.schemas.registry import VERSION_PATTERN
from core.schemas.self_improvement import (
    AdaptiveRetrainParams,
    StrategyDisableParams,
    StrategyEnableParams,
)
from core.schemas.training import TRAINING_TIMEFRAMES, TrainModelParams

JsonSchema = dict[str, Any]

#: ``core.market.is_valid_symbol`` as a pattern: 2-12 of A-Z 0-9, a base of at least two
#: characters, then a quote asset.
SYMBOL_PATTERN = (
    "^(" + "|".join(f"[A-Z0-9]{{2,{12 - len(q)}}}{q}" for q in sorted(QUOTE_ASSETS, key=len)) + ")$"
)
SYMBOL: JsonSchema = {"type": "string", "pattern": SYMBOL_PATTERN}
#: Some character other than white space (validators that strip and then require text).
NOT_BLANK = r"\S"
#: batch_size: a power of two up to 4096.
POWERS_OF_TWO = [2**i for i in range(13)]


def _strategy_parameters(name: str) -> JsonSchema:
    """The JSON schema of strategy ``name``'s parameters (unknown names refused)."""
    schema = STRATEGY_PARAMS[name].model_json_schema()
    schema.pop("title", None)
    for prop in schema["properties"].values():
        prop.pop("title", None)
    return {**schema, "type": "object", "additionalProperties": False}


def _per_strategy(then: Any) -> list[JsonSchema]:
    """``if strategy_name is X then then(X)`` for every strategy; rsi also when it is
    absent (its default)."""
    rules = []
    for name in STRATEGY_PARAMS:
        condition: JsonSchema = {"properties": {"strategy_name": {"const": name}}}
        if name != "rsi":
            condition["required"] = ["strategy_name"]
        rules.append({"if": condition, "then": then(name)})
    return rules


def _model_parameters() -> JsonSchema:
    """``parameters`` of ``strategy_name="model"``: exactly one of model_type (the deployed
    model of the symbol/timeframe) and model_id (a version), and an optional threshold."""
    return {
        "type": "object",
        "properties": {
            "model_type": {"enum": list(MODEL_TYPES)},
            "model_id": {"type": "string", "minLength": 1},
            "threshold": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        },
        "additionalProperties": False,
        "oneOf": [{"required": ["model_type"]}, {"required": ["model_id"]}],
    }


def _backtest_rules() -> list[JsonSchema]:
    model = {
        "if": {
            "properties": {"strategy_name": {"const": MODEL_STRATEGY}},
            "required": ["strategy_name"],
        },
        "then": {"required": ["parameters"], "properties": {"parameters": _model_parameters()}},
    }
    return [
        *_per_strategy(lambda name: {"properties": {"parameters": _strategy_parameters(name)}}),
        model,
    ]


def _optimize_rules() -> list[JsonSchema]:
    return _per_strategy(
        lambda name: {
            "properties": {
                "space": {
                    "anyOf": [
                        {
                            "type": "object",
                            "propertyNames": {"enum": list(STRATEGY_PARAMS[name].model_fields)},
                            "additionalProperties": {"type": "array", "minItems": 1},
                        },
                        {"type": "null"},
                    ]
                }
            }
        }
    )


def _ingest_rules() -> list[JsonSchema]:
    csv = {"properties": {"source": {"const": "csv"}}, "required": ["source"]}
    return [
        {
            "if": csv,
            "then": {
                "required": ["csv_path"],
                "properties": {"csv_path": {"type": "string"}, "symbols": {"maxItems": 1}},
            },
            "else": {"properties": {"symbols": {"minItems": 1}}},
        },
        {  # days or start (csv imports may have neither)
            "anyOf": [
                csv,
                {"not": {"required": ["days"]}},
                {"properties": {"days": {"type": "integer"}}},
                {"required": ["start"], "properties": {"start": {"type": "string"}}},
            ]
        },
        {
            "if": {"properties": {"timeframe": {"const": "4h"}}, "required": ["timeframe"]},
            "then": {"properties": {"resample_to": {"items": {"const": "1d"}}}},
        },
        {
            "if": {"properties": {"timeframe": {"const": "1d"}}, "required": ["timeframe"]},
            "then": {"properties": {"resample_to": {"maxItems": 0}}},
        },
    ]


#: Per parameter model: JSON Schema keywords per field, and rules across fields.
FIELD_RULES: dict[type[BaseModel], dict[str, JsonSchema]] = {
    TrainModelParams: {
        "model_type": {"enum": list(MODEL_TYPES)},
        "symbol": SYMBOL,
        "timeframe": {"enum": list(TRAINING_TIMEFRAMES)},
        "days_of_data": {"minimum": 7},
        "epochs": {"minimum": 1, "maximum": 1000},
        "batch_size": {"enum": POWERS_OF_TWO},
        "learning_rate": {"exclusiveMinimum": 0},
        "validation_split": {"exclusiveMinimum": 0, "maximum": 0.5},
    },
    BacktestParameters: {"symbol": SYMBOL},
    OptimizeParameters: {"symbol": SYMBOL},
    PredictPriceParams: {
        "symbol": SYMBOL,
        "model_type": {"enum": list(MODEL_TYPES)},
        "horizon_hours": {"minimum": 1, "maximum": 168},
        "model_version": {
            "anyOf": [{"type": "string", "pattern": PREDICT_VERSION_PATTERN}, {"type": "null"}]
        },
    },
    BulkAnalysisParams: {
        "symbols": {"minItems": 1, "maxItems": MAX_BULK_SYMBOLS, "uniqueItems": True},
        "timeframe": {"enum": list(TIMEFRAMES)},
        "min_confidence": {
            "anyOf": [{"type": "number", "minimum": 0, "maximum": 1}, {"type": "null"}]
        },
        "model_version": {
            "anyOf": [{"type": "string", "pattern": VERSION_PATTERN}, {"type": "null"}]
        },
    },
    IngestParameters: {
        "symbols": {"items": SYMBOL, "uniqueItems": True},
        "resample_to": {"items": {"enum": ["4h", "1d"]}},
    },
    AdaptiveRetrainParams: {"model_types": {"minItems": 1, "items": {"enum": list(MODEL_TYPES)}}},
    StrategyDisableParams: {
        "strategies": {"contains": {"type": "string", "pattern": NOT_BLANK}},
        "reason": {"pattern": NOT_BLANK},
    },
    StrategyEnableParams: {
        "strategy": {"pattern": NOT_BLANK},
        "reviewer": {"pattern": NOT_BLANK},
        "note": {"pattern": NOT_BLANK},
    },
}

MODEL_RULES: dict[type[BaseModel], list[JsonSchema]] = {
    BacktestParameters: _backtest_rules(),
    OptimizeParameters: _optimize_rules(),
    IngestParameters: _ingest_rules(),
}

#: A request that works on a store holding January 2025 of BTCUSDT 4h candles (the /docs
#: examples; the contract test sends each one).
EXAMPLES: dict[type[BaseModel], JsonSchema] = {
    TrainModelParams: {
        "model_type": "lstm",
        "symbol": "BTCUSDT",
        "timeframe": "4h",
        "days_of_data": 30,
        "epochs": 10,
    },
    BacktestParameters: {
        "strategy_name": "rsi",
        "symbol": "BTCUSDT",
        "timeframe": "4h",
        "start_date": "2025-01-01",
        "end_date": "2025-01-31",
        "parameters": {"rsi_period": 14, "oversold": 30, "overbought": 70},
    },
    OptimizeParameters: {
        "strategy_name": "macd",
        "symbol": "BTCUSDT",
        "timeframe": "4h",
        "start_date": "2025-01-01",
        "end_date": "2025-01-31",
        "method": "grid",
        "parameter_variations": 20,
    },
    PredictPriceParams: {"symbol": "BTCUSDT", "model_type": "lstm", "horizon_hours": 24},
    BulkAnalysisParams: {"symbols": ["BTCUSDT", "ETHUSDT"], "timeframe": "1h"},
    IngestParameters: {"source": "synthetic", "symbols": ["BTCUSDT"], "timeframe": "4h"},
    AdaptiveRetrainParams: {
        "model_types": ["lstm", "gru"],
        "symbols": ["BTCUSDT"],
        "reason": "accuracy fell below 52 % this week",
    },
    StrategyDisableParams: {
        "strategies": ["rsi_btc"],
        "reason": "Win rate 40% (critical threshold 45%)",
    },
    StrategyEnableParams: {
        "strategy": "rsi_btc",
        "reviewer": "alice",
        "note": "parameters reviewed after the drawdown",
    },
}

_DATES = "end_date after start_date"
_RSI = "parameters: oversold below overbought (rsi)"
_MACD = "parameters: fast below slow (macd)"
#: Rules comparing two values (not expressible in JSON Schema), by parameter model; the
#: names are stable (clients and the contract test match on them), the text explains.
CROSS_FIELD_RULES: dict[type[BaseModel], dict[str, str]] = {
    BacktestParameters: {
        _DATES: "end_date must be a later day than start_date (the range is end-exclusive).",
        _RSI: "For rsi, parameters.oversold must be below parameters.overbought.",
        _MACD: "For macd, parameters.fast must be below parameters.slow.",
    },
    OptimizeParameters: {
        _DATES: "end_date must be a later day than start_date (the range is end-exclusive).",
    },
    IngestParameters: {
        "start before end": "When both are given, start must be before end.",
        "csv_path in a data folder": "csv_path must name a file inside a configured data "
        "folder (BOTAI_DATA_DIRS).",
    },
}


def _amend(model: type[BaseModel], schema: JsonSchema) -> None:
    props = schema.get("properties", {})
    for field, keywords in FIELD_RULES.get(model, {}).items():
        prop = props[field]
        if "anyOf" in keywords:
            prop.pop("type", None)
        prop.update(keywords)
    if model in MODEL_RULES:
        schema["allOf"] = [*schema.get("allOf", []), *MODEL_RULES[model]]
    if model in EXAMPLES:
        schema["examples"] = [EXAMPLES[model]]
    rules = CROSS_FIELD_RULES.get(model)
    if rules:
        schema["x-cross-field-rules"] = list(rules)
        text = " ".join(rules.values())
        schema["description"] = f"{schema.get('description', '').strip()}\n\nAlso: {text}".strip()


_JSON_TYPES = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    dict: "object",
    list: "array",
}


def _json_type(value: Any) -> str:
    """The JSON type name of a parsed JSON value."""
    return _JSON_TYPES.get(type(value), "null" if value is None else type(value).__name__)


def violation_message(error: SchemaViolation) -> str:
    """``field.path: what is wrong`` for one schema violation (inputs shortened)."""
    where = ".".join(str(p) for p in error.absolute_path) or "body"
    if error.validator == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        what = f"expected {expected}, got {_json_type(error.instance)}"
    elif error.validator == "anyOf" and not isinstance(error.instance, (dict, list)):
        kinds = [s.get("type") for s in error.validator_value if isinstance(s, dict)]
        what = f"expected {' or '.join(k for k in kinds if k)}, got {_json_type(error.instance)}"
    else:
        what = error.message
    return f"{shorten(where)}: {shorten(what, 200)}"


@cache
def _validator(model: type[BaseModel]) -> Draft202012Validator:
    return Draft202012Validator(model.model_json_schema())


def _held_to_schema(model: type[BaseModel], data: Any) -> None:
    """Raises ValueError naming up to five places where ``data`` breaks ``model``'s schema."""
    errors = sorted(
        _validator(model).iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path]
    )
    if errors:
        raise ValueError("; ".join(violation_message(e) for e in errors[:5]))


@cache
def request_model(params: type[BaseModel]) -> type[BaseModel]:
    """The request body model of a job whose flow takes ``params``.

    Returns:
        a subclass of ``params`` (same fields, validators and messages) whose JSON schema
        states the validators' checks, and which refuses a body its schema refuses after
        the parent's validation passed (see the module notes).
    """

    def extra(schema: JsonSchema) -> None:
        _amend(params, schema)

    def held_to_schema(
        cls: type[BaseModel], data: Any, handler: ModelWrapValidatorHandler[BaseModel]
    ) -> BaseModel:
        model = handler(data)
        if isinstance(data, dict):
            _held_to_schema(cls, data)
        return model

    config = ConfigDict(**{**params.model_config, "json_schema_extra": extra})
    namespace = {
        "model_config": config,
        "__module__": params.__module__,
        "__doc__": params.__doc__,
        "_held_to_schema": model_validator(mode="wrap")(held_to_schema),
    }
    return type(params.__name__, (params,), namespace)
