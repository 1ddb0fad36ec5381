"""The content tree of the report: a TID 1500 Measurement Report built with highdicom's templates.

One TID 1501 measurement group per answer and per piece of evidence, each named by its tracking
identifier (what a reader sees first in a viewer):

    <task>: final answer        the fused label (coded), its probability, the source that weighed most,
                                prior versus image, disagreement, low confidence; TID 4019 algorithm
    <task>: <source>            what one evidence source said (prior, image model, geometry, coverage,
                                blood), with its probability
    anatomical coverage         inferior and superior extent, segment lengths, landmark positions
    blood pool                  median HU of the contrast-bearing vessel, its diameter and length

All values come from the frozen results (node.results); nothing is computed here but the coding.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from highdicom.sr import (
    AlgorithmIdentification,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    TrackingIdentifier,
)
from pydicom.sr.codedict import codes

from node.classify.labels import INTRAVENOUS_ROUTE_CODE, OBLIQUE_CODE, TASK_CODES, TASK_CONCEPTS, TASKS, Code
from node.report import codes as rc
from node.report.codes import concept
from node.report.uids import hashed_uid

ALGORITHM_FAMILY = codes.DCM.ArtificialIntelligence
DEVICE_NAME = "dicom-node classifier"
TASK_TITLES = {"body_part": "body part", "axis": "imaging plane", "contrast": "IV contrast"}
SOURCE_TITLES = {
    "prior": "DICOM attributes",
    "image": "image model",
    "geometry": "orientation geometry",
    "coverage": "anatomical coverage",
    "blood": "blood pool",
}


def split_model_id(model_id: str) -> tuple[str, str]:
    """ "ct-starter@0.2.0" -> ("ct-starter", "0.2.0"); a model id without a version gets "unknown"."""
    name, _, version = model_id.partition("@")
    return name or model_id, version or "unknown"


def measurement_report(results: Mapping[str, Any], document_uid: str) -> MeasurementReport:
    """The TID 1500 content of one report. `document_uid` seeds the tracking UIDs (deterministic)."""
    model_id = str(results.get("model") or results.get("facts", {}).get("classification.model") or "unknown")
    algorithm = algorithm_identification(model_id, results.get("final") or {})
    groups: list[MeasurementsAndQualitativeEvaluations] = []

    def group(
        identifier: str,
        evaluations: Iterable[QualitativeEvaluation] = (),
        measurements: Iterable[Measurement] = (),
        with_algorithm: bool = False,
    ) -> None:
        groups.append(
            MeasurementsAndQualitativeEvaluations(
                tracking_identifier=TrackingIdentifier(
                    uid=hashed_uid("tracking", document_uid, identifier), identifier=identifier
                ),
                algorithm_id=algorithm if with_algorithm else None,
                qualitative_evaluations=list(evaluations) or None,
                measurements=list(measurements) or None,
            )
        )

    facts = results.get("facts") or {}
    final = results.get("final") or {}
    for task in TASKS:
        answer = final.get(task)
        if not isinstance(answer, dict):
            continue
        title = TASK_TITLES[task]
        group(
            f"{title}: final answer",
            _final_evaluations(task, answer, facts),
            _probability(answer.get("confidence")),
            with_algorithm=True,
        )
        prior = (results.get("prior") or {}).get(task) or {}
        for source, said in (answer.get("sources") or {}).items():
            code = _label_code(task, said.get("label"))
            if code is None:
                continue
            name = SOURCE_TITLES.get(source, source)
            if source == "prior" and prior.get("source"):
                name = f"{name} ({prior['source']})"
            group(
                f"{title}: {name}",
                [
                    QualitativeEvaluation(concept(TASK_CONCEPTS[task]), concept(code)),
                    QualitativeEvaluation(concept(rc.EVIDENCE_SOURCE), concept(_source_code(source))),
                ],
                _probability(said.get("confidence")),
                with_algorithm=source == "image",
            )
    measured = results.get("measurements") or {}
    coverage = measured.get("coverage")
    if isinstance(coverage, dict) and coverage.get("anatomical"):
        group("anatomical coverage", *_coverage(coverage))
    blood = measured.get("blood")
    if isinstance(blood, dict) and blood.get("found"):
        group("blood pool", (), _blood(blood))
    return MeasurementReport(
        observation_context=observation_context(model_id),
        procedure_reported=concept(rc.PROCEDURE),
        imaging_measurements=groups,
    )


def algorithm_identification(model_id: str, final: Mapping[str, Any]) -> AlgorithmIdentification:
    """TID 4019: the model package's name and version; the fusion weights per task as parameters."""
    name, version = split_model_id(model_id)
    parameters = []
    for task in TASKS:
        sources = (final.get(task) or {}).get("sources") or {}
        weights = [f"{s}={v['weight']}" for s, v in sources.items() if isinstance(v, dict) and "weight" in v]
        if weights:
            parameters.append(f"{task} fusion weights: {' '.join(weights)}")
    return AlgorithmIdentification(
        name=name,
        version=version,
        parameters=parameters or None,
        family=ALGORITHM_FAMILY,
        manufacturer="dicom-node",
    )


def observation_context(model_id: str) -> ObservationContext:
    """TID 1002 observer: the node's classifier as a device (its UID follows the model id)."""
    return ObservationContext(
        observer_device_context=ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
                uid=hashed_uid("device", model_id),
                name=DEVICE_NAME,
                manufacturer_name="dicom-node",
                model_name=model_id[:64],
            ),
        )
    )


def _final_evaluations(
    task: str, answer: Mapping[str, Any], facts: Mapping[str, Any]
) -> list[QualitativeEvaluation]:
    out: list[QualitativeEvaluation] = []
    code = _label_code(task, answer.get("label"))
    if code is not None:
        out.append(QualitativeEvaluation(concept(TASK_CONCEPTS[task]), concept(code)))
    if task == "axis" and facts.get("prior.axis_oblique") is True:
        out.append(QualitativeEvaluation(concept(TASK_CONCEPTS["axis"]), concept(OBLIQUE_CODE)))
    if task == "contrast" and answer.get("label") == "yes":
        out.append(
            QualitativeEvaluation(concept(rc.ROUTE_OF_ADMINISTRATION), concept(INTRAVENOUS_ROUTE_CODE))
        )
    out.append(QualitativeEvaluation(concept(rc.MAIN_SOURCE), concept(_source_code(answer.get("source")))))
    relation = rc.RELATION_CODES.get(str(answer.get("prior_vs_image")))
    if relation is not None:
        out.append(QualitativeEvaluation(concept(rc.PRIOR_VERSUS_IMAGE), concept(relation)))
    disputed = bool(facts.get(f"disagreement.{task}"))
    out.append(QualitativeEvaluation(concept(rc.DISAGREEMENT), concept(rc.YES if disputed else rc.NO)))
    low = bool(answer.get("low_confidence"))
    out.append(QualitativeEvaluation(concept(rc.LOW_CONFIDENCE), concept(rc.YES if low else rc.NO)))
    return out


def _label_code(task: str, label: object) -> Code | None:
    return TASK_CODES[task].get(label) if isinstance(label, str) else None


def _source_code(source: object) -> Code:
    return rc.SOURCE_CODES.get(str(source), rc.SOURCE_CODES["none"])


def _probability(value: object) -> list[Measurement]:
    if not isinstance(value, int | float):
        return []
    return [Measurement(name=concept(rc.PROBABILITY), value=float(value), unit=concept(rc.RATIO))]


def _mm(name: Code, value: object, site: Code | None) -> list[Measurement]:
    if not isinstance(value, int | float):
        return []
    sites = [FindingSite(concept(site))] if site is not None else None
    return [
        Measurement(name=concept(name), value=float(value), unit=concept(rc.MILLIMETRE), finding_sites=sites)
    ]


def _coverage(coverage: Mapping[str, Any]) -> tuple[list[QualitativeEvaluation], list[Measurement]]:
    """From/to as coded regions; the length of each segment; each landmark's distance from the series'
    inferior (feet) end."""
    evaluations = []
    for key, name in (("from", rc.INFERIOR_EXTENT), ("to", rc.SUPERIOR_EXTENT)):
        region = rc.SEGMENT_CODES.get(str(coverage.get(key)))
        if region is not None:
            evaluations.append(QualitativeEvaluation(concept(name), concept(region)))
    measurements: list[Measurement] = []
    for segment, length in (coverage.get("segments_mm") or {}).items():
        measurements += _mm(rc.LENGTH, length, rc.SEGMENT_CODES.get(segment))
    for landmark in coverage.get("landmarks") or ():
        code = rc.LANDMARK_CODES.get(str(landmark.get("name")))
        if code is not None:
            measurements += _mm(rc.DISTANCE, landmark.get("z_mm"), code)
    return evaluations, measurements


def _blood(blood: Mapping[str, Any]) -> list[Measurement]:
    """The vessel the contrast answer measured: median HU, diameter, length; the probability of contrast
    that this HU gives."""
    site = rc.AORTA if str(blood.get("structure", "")).startswith("aorta") else rc.BLOOD_VESSEL
    out: list[Measurement] = []
    hu = blood.get("hu_median")
    if isinstance(hu, int | float):
        out.append(
            Measurement(
                name=concept(rc.MEDIAN_ATTENUATION),
                value=float(hu),
                unit=concept(rc.HOUNSFIELD),
                finding_sites=[FindingSite(concept(site))],
            )
        )
    out += _mm(rc.DIAMETER, blood.get("diameter_mm"), site)
    out += _mm(rc.LENGTH, blood.get("length_mm"), site)
    out += _probability(blood.get("probability_yes"))
    return out
