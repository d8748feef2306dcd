"""The conformance suite: does a server speak the siyi protocol (PROTOCOL.md §1–§11)?

``siyi conformance URL`` runs it. It needs nothing of siyi's server or client code: the modules
`probe`, `registry`, `cases`, `cases_more` and `runner` speak to the URL with plain aiohttp and
raw JSON, so they judge the wire and can judge a server written in any language, provided it
serves the reference command set (the README's "Conformance" section;
`cases.REFERENCE_COMMANDS`).

`siyi_sdk.conformance.reference` is the other side: the reference command set on siyi's own
`ProtocolServer` (``siyi serve --conformance``). It is imported only when asked for.
"""

from .cases import REFERENCE_COMMANDS, REFERENCE_EVENTS
from .probe import CaseFailedError, CaseSkippedError, Target
from .registry import CASES, Case
from .runner import (
    CaseResult,
    Outcome,
    Report,
    load_expected_failures,
    run_suite,
    select_cases,
)

__all__ = [
    "CASES",
    "REFERENCE_COMMANDS",
    "REFERENCE_EVENTS",
    "Case",
    "CaseFailedError",
    "CaseResult",
    "CaseSkippedError",
    "Outcome",
    "Report",
    "Target",
    "load_expected_failures",
    "run_suite",
    "select_cases",
]
