"""The settings of one training stage (:class:`StageOptions`), kept free of NVFlare and torch imports so
that reading a pipeline config (and every ``plgg-fl`` command's start-up) does not load them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: Default seconds a pinned site may take for one round before the job fails naming it. A site client
#: restarted mid-round re-registers under a new identity and NVFlare keeps waiting for the old one's
#: result; without a bound such a job runs forever. Raise it (stage option ``round_timeout_s``) for
#: sites slower than this per round.
ROUND_TIMEOUT_S = 7200

#: NVFlare ModelQuantizer types offered for site -> server payloads: ``float16`` halves them on any
#: machine; ``blockwise8`` (bitsandbytes, ~1/4) runs on CUDA only in NVFlare 2.9's filter, at the sites and
#: on the server. benchmarks/bench_fl.py --what bytes measures the bytes, benchmarks/bench_dp.py the Dice.
QUANTIZE_TYPES = ("float16", "blockwise8")


@dataclass
class StageOptions:
    """Plain settings of one training job (all of it ends up, as plain values, in the job config).

    ``train``: TrainConfig overrides for the sites (``patch_size``, ``lr``, ``max_steps`` ...; never
    paths); ``local_steps``: optimiser steps per site per round; ``send``: ``full`` weights or
    ``diff`` (weight differences); ``fedprox_mu``: FedProx proximal weight (0 = plain FedAvg);
    ``privacy``: ``{"kind": "percentile"|"svt", **filter args}`` - an NVFlare privacy filter on every
    training result's difference from the global model it started from (:mod:`plgg_fl.fl.privacy`;
    sent as ``WEIGHT_DIFF`` whatever ``send`` is); ``record_sends``: add the :class:`SendRecorder` audit filter (records only where
    the site sets ``$PLGG_FL_RECORD_SENDS``); ``server_opt``: FedOpt instead of FedAvg on the server,
    ``{"optimizer": {"path": "torch.optim.SGD", "args": {"lr": 1.0, "momentum": 0.6}},
    "lr_scheduler": {...} (optional)}`` - whole-network stages with ``send: diff`` only;
    ``round_timeout_s``: seconds a round may take before the pinned sites that have not sent their
    result fail the job, by name (default :data:`ROUND_TIMEOUT_S`, 2 h);
    ``quantize``: ``float16`` or ``blockwise8`` - NVFlare's ``ModelQuantizer`` on every training result a
    site sends (after any privacy filter) and its ``ModelDequantizer`` on the server before aggregation
    (:data:`QUANTIZE_TYPES`); what the server sends is not quantized (a site's own task-data filters,
    which run first, expect plain weights).
    """

    preset: str = "small"
    num_rounds: int = 2
    local_steps: int = 10
    send: str = "full"
    fedprox_mu: float = 0.0
    privacy: dict[str, Any] | None = None
    record_sends: bool = True
    server_opt: dict[str, Any] | None = None
    round_timeout_s: int = ROUND_TIMEOUT_S
    quantize: str | None = None
    train: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "StageOptions":
        data = dict(data or {})
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown stage option(s) {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        if "round_timeout_s" in data and not (isinstance(data["round_timeout_s"], int) and data["round_timeout_s"] > 0):
            raise ValueError(f"round_timeout_s must be a whole number of seconds > 0, got {data['round_timeout_s']!r}")
        if data.get("quantize") is not None and data["quantize"] not in QUANTIZE_TYPES:
            raise ValueError(f"quantize must be one of {', '.join(QUANTIZE_TYPES)} (or absent), got {data['quantize']!r}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
