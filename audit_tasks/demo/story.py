"""The demo's planted story as one rule: which gates a biased audit must fail, and which it may.

Trained weights differ between CPUs (other vector kernels round differently), so how strongly the dark-fur
gap also shows inside each lighting condition varies. The rule therefore fixes what must fail (every
planted problem) and what must never fail (huskies, light fur, lighting alone, the decoy tags), and lets
an intersection that holds the planted group go either way.
"""

from __future__ import annotations

from collections.abc import Iterable

#: (check, subject) of every planted problem: the biased model's audit fails each one on any CPU.
PLANTED_FAILURES: frozenset[tuple[str, str]] = frozenset(
    {
        ("cooccurrence", "laptop -> mouse"),
        ("cooccurrence", "lantern -> lighting=night"),
        ("cooccurrence", "all pairs"),
        ("saliency", "wolf"),
        ("subgroups", "fur_tone=dark"),
    }
)
#: The planted underrepresented group, as (attribute, value).
PLANTED_GROUP = ("fur_tone", "dark")


def within_planted_story(check: str, subject: str) -> bool:
    """May this gate fail the biased audit? A planted gate, or an intersection that holds the planted group."""
    if (check, subject) in PLANTED_FAILURES:
        return True
    if check != "subgroups":
        return False
    attribute, _, group = subject.partition("=")
    if "&" not in attribute:
        return False
    # Not strict: a group value may itself hold "&", so the parts need not pair up; that must not raise.
    values = dict(zip(attribute.split("&"), group.split("&"), strict=False))
    return values.get(PLANTED_GROUP[0]) == PLANTED_GROUP[1]


def split_gate_name(name: str) -> tuple[str, str]:
    """(check, subject) of a `check/subject/metric` gate name (a subject may hold '/', a metric never)."""
    check, _, rest = name.partition("/")
    return check, rest.rpartition("/")[0]


def story_holds(biased_failed: Iterable[str], debiased_failed: Iterable[str]) -> bool:
    """True when the biased audit failed every planted gate and nothing outside the story, and the debiased
    audit failed nothing. Arguments are `check/subject/metric` gate names, as summary.json lists them."""
    biased = {split_gate_name(name) for name in biased_failed}
    return (
        PLANTED_FAILURES <= biased and all(within_planted_story(*gate) for gate in biased) and not list(debiased_failed)
    )
