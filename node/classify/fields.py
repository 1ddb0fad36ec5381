"""The facts the classifying analyser gives routing rules: one registry of their names, types and values.

Pure data (no torch, no rules): the rules package checks every condition on an analysis field against it
when a rules file is loaded, docs/rules.md's table of analysis fields is rendered from it
(`python -m node.classify.fields`), and tests/unit/test_analysis_fields.py runs the analyser on real series
and checks every fact it produces against it, so code, rules and documentation cannot drift apart.

    spec = ANALYSIS_FIELDS["prediction.body_part"]
    spec.kind, spec.vocabulary        # "label", ("Head", ..., "Pelvis", "unknown")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from node.classify.labels import TASKS

# How an unknown answer appears in the facts (fusion and the prior both write it).
UNKNOWN = "unknown"
# Where the final answer for a task came from (fusion.TaskResult.source); the geometry (Image Orientation
# (Patient)) decides the axis only.
PREDICTION_SOURCES: tuple[str, ...] = ("image", "geometry", "prior", "blood", "coverage", "none")
# Which sources can decide which task: the geometry the axis, the blood pool the contrast, the coverage
# the body part.
_SOURCE_TASK = {"geometry": "axis", "blood": "contrast", "coverage": "body_part"}
SOURCES_BY_TASK: dict[str, tuple[str, ...]] = {
    task: tuple(s for s in PREDICTION_SOURCES if _SOURCE_TASK.get(s, task) == task) for task in TASKS
}
# The segments of the body a series can run from and to (node.classify.coverage.SEGMENTS).
COVERAGE_SEGMENTS: tuple[str, ...] = ("legs", "pelvis", "abdomen", "chest", "neck", "head")
HOUNSFIELD = (-1024.0, 3071.0)
# Why a series was not classified (node.volume's codes, and the analyser's own for a failing model).
NOT_CLASSIFIABLE_CODES: tuple[str, ...] = (
    "empty",
    "unreadable",
    "not_image",
    "not_ct",
    "localizer_only",
    "no_geometry",
    "not_monochrome",
    "single_slice",
    "too_few_slices",
    "classifier_error",
    "no_anatomy",
)
PROBABILITY = (0.0, 1.0)
# The slice normal's angle to its nearest patient axis can be at most arccos(1/sqrt(3)), about 54.7.
DEGREES = (0.0, 90.0)

Kind = Literal["label", "number", "boolean", "text"]
# When the analyser sets a field: for every series, only when the image model classified it, or only when
# it did not.
Presence = Literal["always", "classified", "not classified"]

TASK_WORDS = {"body_part": "body part", "axis": "imaging axis", "contrast": "IV contrast"}
SOURCE_EXAMPLES = {
    "body_part": "`BodyPartExamined`, `SeriesDescription`",
    "axis": "`ImageOrientationPatient`",
    "contrast": "`ContrastBolusAgent`",
}


@dataclass(frozen=True)
class AnalysisField:
    """One name the analysis step can put in the facts."""

    name: str
    kind: Kind
    meaning: str
    vocabulary: tuple[str, ...] = ()  # labels: every value the field can take
    bounds: tuple[float, float] | None = None  # numbers: the lowest and highest value, inclusive
    present: Presence = "always"
    nullable: bool = False  # may be None (rules see it as missing) even when present says it is set

    def __post_init__(self) -> None:
        if (self.kind == "label") != bool(self.vocabulary):
            raise ValueError(f"{self.name}: a label has a vocabulary and only a label has one")
        if (self.kind == "number") != (self.bounds is not None):
            raise ValueError(f"{self.name}: a number has bounds and only a number has them")

    @property
    def type_text(self) -> str:
        """The type as the documentation and error messages say it."""
        if self.kind == "number":
            assert self.bounds is not None
            return f"number from {self.bounds[0]:g} to {self.bounds[1]:g}"
        return {"label": "label", "boolean": "boolean", "text": "text"}[self.kind]


def _fields() -> tuple[AnalysisField, ...]:
    out = [
        AnalysisField(
            "classifiable",
            "boolean",
            "true when the series became a volume and the image model classified it",
        )
    ]
    for task, classes in TASKS.items():
        words = TASK_WORDS[task]
        out += [
            AnalysisField(
                f"prediction.{task}",
                "label",
                f"the node's final {words}: image model and tags fused (docs/classification.md); "
                f"`{UNKNOWN}` when neither knows",
                (*classes, UNKNOWN),
            ),
            AnalysisField(
                f"prediction.{task}_confidence",
                "number",
                f"probability of prediction.{task}",
                bounds=PROBABILITY,
            ),
            AnalysisField(
                f"prediction.{task}_source",
                "label",
                f"the source that weighed most in prediction.{task}: "
                + ("`geometry` (Image Orientation (Patient)), " if task == "axis" else "")
                + ("`blood` (the measured blood HU), " if task == "contrast" else "")
                + ("`coverage` (the anatomical coverage), " if task == "body_part" else "")
                + "`image` (the image model), `prior` (the tags), `none` (no source knew)",
                SOURCES_BY_TASK[task],
            ),
            AnalysisField(
                f"prediction.{task}_low_confidence",
                "boolean",
                f"prediction.{task}_confidence is below classify.min_confidence",
            ),
        ]
    out.append(
        AnalysisField("prediction.low_confidence", "boolean", "any task's prediction is low confidence")
    )
    for task, classes in TASKS.items():
        words = TASK_WORDS[task]
        out += [
            AnalysisField(
                f"image.{task}",
                "label",
                f"the {words} the image model alone says",
                classes,
                present="classified",
            ),
            AnalysisField(
                f"image.{task}_confidence",
                "number",
                f"the image model's probability of image.{task}",
                bounds=PROBABILITY,
                present="classified",
            ),
        ]
    for task, classes in TASKS.items():
        words = TASK_WORDS[task]
        out += [
            AnalysisField(
                f"prior.{task}",
                "label",
                f"the {words} the DICOM attributes say (docs/prior.md); `{UNKNOWN}` when they say nothing",
                (*classes, UNKNOWN),
            ),
            AnalysisField(
                f"prior.{task}_confidence",
                "number",
                f"how sure the attributes are of prior.{task} (0 when unknown)",
                bounds=PROBABILITY,
            ),
            AnalysisField(
                f"prior.{task}_source",
                "text",
                f"the attribute that decided prior.{task} ({SOURCE_EXAMPLES[task]}, ...: docs/prior.md); "
                "`none` when none did",
            ),
        ]
    out += [
        AnalysisField(
            "prior.axis_oblique",
            "boolean",
            "the slice normal is further from its nearest patient axis than the oblique tolerance; "
            "missing without Image Orientation (Patient)",
            nullable=True,
        ),
        AnalysisField(
            "prior.axis_obliquity_degrees",
            "number",
            "the slice normal's angle to its nearest patient axis, in degrees; "
            "missing without Image Orientation (Patient)",
            bounds=DEGREES,
            nullable=True,
        ),
    ]
    out += [
        AnalysisField(
            "blood.found",
            "boolean",
            "a blood-pool vessel (aorta-like tube beside the spine) was found and measured",
            present="classified",
        ),
        AnalysisField(
            "blood.hu",
            "number",
            "the measured blood HU (median over the vessel); missing when none was found",
            bounds=HOUNSFIELD,
            present="classified",
            nullable=True,
        ),
        AnalysisField(
            "blood.contrast_probability",
            "number",
            "P(IV contrast) from the blood HU (unenhanced 30-60 HU, enhanced 120-500 HU); missing when no "
            "vessel was found",
            bounds=PROBABILITY,
            present="classified",
            nullable=True,
        ),
        AnalysisField(
            "coverage.from",
            "label",
            "the body segment the series starts at, feet end (docs/classification.md, coverage)",
            COVERAGE_SEGMENTS,
            present="classified",
            nullable=True,
        ),
        AnalysisField(
            "coverage.to",
            "label",
            "the body segment the series reaches, head end",
            COVERAGE_SEGMENTS,
            present="classified",
            nullable=True,
        ),
        AnalysisField(
            "coverage.body_part",
            "label",
            f"the body part the anatomical coverage makes (the coverage table); `{UNKNOWN}` when it fits "
            "none",
            (*TASKS["body_part"], UNKNOWN),
            present="classified",
        ),
        AnalysisField(
            "coverage.body_part_confidence",
            "number",
            "the coverage table's probability of coverage.body_part (0 when unknown)",
            bounds=PROBABILITY,
            present="classified",
        ),
    ]
    for task in TASKS:
        out.append(
            AnalysisField(
                f"disagreement.{task}",
                "boolean",
                f"the tags, reasonably sure, conflict on the {TASK_WORDS[task]} with the confident final "
                "answer or a confident measurement (blood pool, coverage)",
            )
        )
    out += [
        AnalysisField("disagreement.any", "boolean", "any task's disagreement is true"),
        AnalysisField("classification.model", "text", "the model package that classified: `name@version`"),
        AnalysisField(
            "classification.device",
            "text",
            "where the model ran (`cpu`, `cuda:0`, ...)",
            present="classified",
        ),
        AnalysisField(
            "classification.code",
            "label",
            "why the series was not classified, as a code",
            NOT_CLASSIFIABLE_CODES,
            present="not classified",
        ),
        AnalysisField(
            "classification.reason",
            "text",
            "why the series was not classified, as one sentence",
            present="not classified",
        ),
    ]
    return tuple(out)


# Name -> field, in the order the documentation lists them.
ANALYSIS_FIELDS: dict[str, AnalysisField] = {spec.name: spec for spec in _fields()}
# The names without a namespace, and the namespaces ("prediction.", ...) of the others.
ANALYSIS_NAMES: tuple[str, ...] = tuple(name for name in ANALYSIS_FIELDS if "." not in name)
ANALYSIS_NAMESPACES: tuple[str, ...] = tuple(
    dict.fromkeys(name.split(".", 1)[0] + "." for name in ANALYSIS_FIELDS if "." in name)
)


def markdown_table() -> str:
    """The table of analysis fields in docs/rules.md (a unit test keeps the two equal)."""
    when = {"always": "always", "classified": "classifiable", "not classified": "not classifiable"}
    lines = ["| field | type | values | set | meaning |", "|---|---|---|---|---|"]
    for spec in ANALYSIS_FIELDS.values():
        values = ", ".join(f"`{v}`" for v in spec.vocabulary) if spec.kind == "label" else ""
        if spec.kind == "boolean":
            values = "`true`, `false`"
        set_when = when[spec.present] + (", may be missing" if spec.nullable else "")
        lines.append(f"| `{spec.name}` | {spec.type_text} | {values} | {set_when} | {spec.meaning} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
