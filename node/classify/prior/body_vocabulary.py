"""Body part vocabulary: the regions each class is made of, description words and spine levels,
BodyPartExamined defined terms, and the coarse regions that make two classes overlap."""

from __future__ import annotations

from typing import Literal

from node.classify.labels import BODY_PARTS

Kind = Literal["region", "within", "near"]

# Regions ("atoms") that the 16 classes are made of.
CLASS_ATOMS: dict[str, frozenset[str]] = {
    "Head": frozenset({"HEAD"}),
    "Head and face": frozenset({"HEAD", "FACE"}),
    "Face/Orbits/Sinus": frozenset({"FACE"}),
    "Temporal bone": frozenset({"TEMPORAL"}),
    "Head and neck": frozenset({"HEAD", "NECK"}),
    "Neck": frozenset({"NECK"}),
    "C-spine": frozenset({"CSPINE"}),
    "C and T spine": frozenset({"CSPINE", "TSPINE"}),
    "T-spine": frozenset({"TSPINE"}),
    "T and L spine": frozenset({"TSPINE", "LSPINE"}),
    "L-spine": frozenset({"LSPINE"}),
    "Chest": frozenset({"CHEST"}),
    "Chest-abdomen-pelvis": frozenset({"CHEST", "ABDOMEN", "PELVIS"}),
    "Abdomen": frozenset({"ABDOMEN"}),
    "Abdomen-pelvis": frozenset({"ABDOMEN", "PELVIS"}),
    "Pelvis": frozenset({"PELVIS"}),
}
assert tuple(CLASS_ATOMS) == BODY_PARTS

_CAP = ("CHEST", "ABDOMEN", "PELVIS")
_AP = ("ABDOMEN", "PELVIS")

# Description words -> (atoms, kind). "region": the words name a class's region (or a plain synonym of
# it); "within": an organ inside one; "near": the closest class, not containing it. Phrases are space
# separated word sequences as words_of() splits them (so "C-SPINE" is "C SPINE", "A/P" is "A P").
# A few common non-English words (German, Polish, French, Spanish) are included: real traffic has them.
_BODY_PHRASES: dict[str, tuple[tuple[str, ...], Kind]] = {}


def _add(phrases: str, atoms: tuple[str, ...], kind: Kind = "region") -> None:
    for phrase in phrases.split(","):
        _BODY_PHRASES[phrase.strip()] = (atoms, kind)


_add(
    "HEAD,BRAIN,CRANIUM,CRANIAL,SKULL,CCT,KOPF,SCHAEDEL,SCHADEL,GLOWA,GLOWY,TETE,CRANE,CABEZA,CRANEO",
    ("HEAD",),
)
_add("CEREBRAL,CEREBRUM,STROKE,HIRN,CERVEAU,CEREBRO,MOZGU,MOZG", ("HEAD",), "within")
_add("FACE,FACIAL,FACIAL BONES,MAXILLOFACIAL,MAXFAC,MAX FAC,MIDFACE,MID FACE", ("FACE",))
_add("SINUS,SINUSES,PARANASAL,PNS,NNH,ORBIT,ORBITS,ORBITAL,ZATOK", ("FACE",))
_add(
    "MAXILLA,MANDIBLE,MANDIBULAR,ZYGOMA,ZYGOMATIC,NASAL,NOSE,DENTAL,DENTASCAN,TMJ,JAW,EYE,EYES",
    ("FACE",),
    "within",
)
_add(
    "TEMPORAL BONE,TEMPORAL BONES,TEMPORALBONE,T BONE,T BONES,TBONE,TBONES,PETROUS,FELSENBEIN", ("TEMPORAL",)
)
_add("IAC,IACS,INTERNAL AUDITORY,INTERNAL AUDITORY CANAL,INNER EAR,MASTOID,MASTOIDS", ("TEMPORAL",))
_add("EAR,EARS", ("TEMPORAL",), "within")
_add("NECK,HALS,SZYI,CUELLO,COU", ("NECK",))
_add(
    "LARYNX,LARYNGEAL,THYROID,PHARYNX,HYPOPHARYNX,OROPHARYNX,NASOPHARYNX,PAROTID,SUBMANDIBULAR",
    ("NECK",),
    "within",
)
_add("CAROTID,CAROTIDS", ("NECK",), "within")
_add("HEADNECK,HEAD NECK,HEAD AND NECK,H N", ("HEAD", "NECK"))
_add("CSPINE,HWS", ("CSPINE",))
_add("TSPINE,BWS", ("TSPINE",))
_add("LSPINE,LWS,LSSPINE,LUMBAR,LUMBOSACRAL", ("LSPINE",))
_add("CTSPINE,CERVICOTHORACIC", ("CSPINE", "TSPINE"))
_add("TLSPINE,THORACOLUMBAR", ("TSPINE", "LSPINE"))
_add("CHEST,THORAX,THX,LUNG,LUNGS,PULMONARY,HRCT,PE,CTPA,TORAX,KLATKI,KLATKA,POUMON,POUMONS", ("CHEST",))
_add(
    "THORACIC,HEART,CARDIAC,CORONARY,CORONARIES,CALCIUM SCORE,MEDIASTINUM,RIB,RIBS,STERNUM",
    ("CHEST",),
    "within",
)
_add("THORACIC AORTA,SERCA,SERCE", ("CHEST",), "within")
_add("BREAST,BREASTS,MAMMA", ("CHEST",), "near")
_add("ABDOMEN,ABD,ABDO,ABDOM,ABDOMINAL,BAUCH,BRZUCHA,BRZUCH,BRZUSZNEJ,ABDOMINALE", ("ABDOMEN",))
_add("LIVER,HEPATIC,PANCREAS,PANCREATIC,KIDNEY,KIDNEYS,RENAL,ADRENAL,ADRENALS,SPLEEN", ("ABDOMEN",), "within")
_add("STOMACH,GASTRIC,BILIARY,GALLBLADDER,ABDOMINAL AORTA,LEBER,NIERE,NIEREN", ("ABDOMEN",), "within")
_add("PELVIS,PELVIC,PEL,PELV,BECKEN,MIEDNICA,MIEDNICY,BASSIN", ("PELVIS",))
_add(
    "HIP,HIPS,SACRUM,COCCYX,BLADDER,PROSTATE,UTERUS,OVARY,OVARIES,RECTUM,ACETABULUM,SI JOINTS,SIJ",
    ("PELVIS",),
    "within",
)
_add("ABDOMENPELVIS,ABDPELVIS,ABDPEL,A P,ABD PEL,ABDOMEN PELVIS", _AP)
_add("ENTEROGRAPHY,COLONOGRAPHY,UROGRAM,UROGRAPHY,KUB,APPENDIX,APPENDICITIS", _AP, "within")
_add("CAP,TAP,C A P,CHESTABDPELVIS,CHESTABDOMENPELVIS,CHEST ABDOMEN PELVIS", _CAP)
_add("WHOLEBODY,WHOLE BODY,GANZKOERPER", _CAP, "near")

# Spine levels: the words before SPINE ("C T SPINE" from C-T SPINE, "CERVICAL AND THORACIC SPINE") or
# after it ("SPINE LUMBAR"). Single letters count only next to SPINE. "CT SPINE" is a CT of the spine
# (no level): CT is not a level word, while C-T SPINE splits into C, T.
LEVELS: dict[str, str] = {
    "C": "C",
    "T": "T",
    "D": "T",
    "L": "L",
    "CERVICAL": "C",
    "THORACIC": "T",
    "DORSAL": "T",
    "LUMBAR": "L",
    "LUMBOSACRAL": "L",
    "TL": "TL",
    "CTL": "CTL",
    "LS": "L",
    "CERVICOTHORACIC": "CT",
    "THORACOLUMBAR": "TL",
}
LEVEL_WORDS_AFTER = frozenset({"CERVICAL", "THORACIC", "DORSAL", "LUMBAR", "LUMBOSACRAL"})
CONNECTORS = frozenset({"AND", "TO", "UND", "I"})
SPINE_WORDS = frozenset({"SPINE", "SPINAL", "SP", "WS"})
LEVEL_ATOM = {"C": "CSPINE", "T": "TSPINE", "L": "LSPINE"}


BODY_TABLE: dict[tuple[str, ...], tuple[tuple[str, ...], Kind]] = {
    tuple(phrase.split()): entry for phrase, entry in _BODY_PHRASES.items()
}


# BodyPartExamined defined terms (PS3.16 Annex L) and common non-standard values -> (atoms, kind).
# Terms whose region lies in no class, or spans several (NECKCHEST, SPINE, KNEE...), map to no atoms:
# the prior then says unknown and the evidence says why.
BODY_PART_EXAMINED: dict[str, tuple[tuple[str, ...], Kind]] = {
    "HEAD": (("HEAD",), "region"),
    "SKULL": (("HEAD",), "region"),
    "BRAIN": (("HEAD",), "region"),
    "HEADNECK": (("HEAD", "NECK"), "region"),
    "NECK": (("NECK",), "region"),
    "CSPINE": (("CSPINE",), "region"),
    "CTSPINE": (("CSPINE", "TSPINE"), "region"),
    "TSPINE": (("TSPINE",), "region"),
    "TLSPINE": (("TSPINE", "LSPINE"), "region"),
    "LSPINE": (("LSPINE",), "region"),
    "LSSPINE": (("LSPINE",), "region"),
    "CHEST": (("CHEST",), "region"),
    "THORAX": (("CHEST",), "region"),
    "LUNG": (("CHEST",), "region"),
    "CHESTABDPELVIS": (_CAP, "region"),
    "CHESTABDOMEN": (("CHEST", "ABDOMEN"), "region"),  # no class: read as Chest-abdomen-pelvis (closest)
    "ABDOMEN": (("ABDOMEN",), "region"),
    "ABDOMENPELVIS": (_AP, "region"),
    "PELVIS": (("PELVIS",), "region"),
    # within a class's region
    "ORBIT": (("FACE",), "within"),
    "MAXILLA": (("FACE",), "within"),
    "JAW": (("FACE",), "within"),
    "ZYGOMA": (("FACE",), "within"),
    "TMJ": (("FACE",), "within"),
    "EYE": (("FACE",), "within"),
    "IAC": (("TEMPORAL",), "region"),
    "EAR": (("TEMPORAL",), "within"),
    "LARYNX": (("NECK",), "within"),
    "PAROTID": (("NECK",), "within"),
    "SUBMANDIBULAR": (("NECK",), "within"),
    "THYROID": (("NECK",), "within"),
    "HEART": (("CHEST",), "within"),
    "MEDIASTINUM": (("CHEST",), "within"),
    "BRONCHUS": (("CHEST",), "within"),
    "RIB": (("CHEST",), "within"),
    "STERNUM": (("CHEST",), "within"),
    "ESOPHAGUS": (("CHEST",), "within"),
    "LIVER": (("ABDOMEN",), "within"),
    "GALLBLADDER": (("ABDOMEN",), "within"),
    "PANCREAS": (("ABDOMEN",), "within"),
    "KIDNEY": (("ABDOMEN",), "within"),
    "ADRENAL": (("ABDOMEN",), "within"),
    "SPLEEN": (("ABDOMEN",), "within"),
    "STOMACH": (("ABDOMEN",), "within"),
    "DUODENUM": (("ABDOMEN",), "within"),
    "ABDOMINALAORTA": (("ABDOMEN",), "within"),
    "COLON": (_AP, "within"),
    "URETER": (_AP, "within"),
    "BLADDER": (("PELVIS",), "within"),
    "PROSTATE": (("PELVIS",), "within"),
    "RECTUM": (("PELVIS",), "within"),
    "HIP": (("PELVIS",), "within"),
    "ILIUM": (("PELVIS",), "within"),
    "SACRUM": (("PELVIS",), "within"),
    "SSPINE": (("PELVIS",), "within"),
    "COCCYX": (("PELVIS",), "within"),
    "UTERUS": (("PELVIS",), "within"),
    # near: not inside any class, read as the closest one
    "BREAST": (("CHEST",), "near"),
    "CLAVICLE": (("CHEST",), "near"),
    "SCAPULA": (("CHEST",), "near"),
    "WHOLEBODY": (_CAP, "near"),
    # no class near them
    "NECKCHEST": (("NECK", "CHEST"), "region"),
    "NECKCHESTABDOMEN": (("NECK", "CHEST", "ABDOMEN"), "region"),
    "NECKCHESTABDPELV": (("NECK", "CHEST", "ABDOMEN", "PELVIS"), "region"),
    "SPINE": ((), "region"),
    "WHOLESPINE": ((), "region"),
    "EXTREMITY": ((), "region"),
    "SHOULDER": ((), "region"),
    "ARM": ((), "region"),
    "ELBOW": ((), "region"),
    "WRIST": ((), "region"),
    "HAND": ((), "region"),
    "FINGER": ((), "region"),
    "THUMB": ((), "region"),
    "LEG": ((), "region"),
    "THIGH": ((), "region"),
    "FEMUR": ((), "region"),
    "KNEE": ((), "region"),
    "ANKLE": ((), "region"),
    "FOOT": ((), "region"),
    "TOE": ((), "region"),
}


# Coarse regions of the body each class lies in: a spine class lies in its part of the trunk, the temporal
# bone in the head. Two sources naming classes that share one (C-spine and Neck, Abdomen and Abdomen-
# pelvis) overlap rather than conflict.
COARSE_REGIONS: dict[str, frozenset[str]] = {
    "Head": frozenset({"head"}),
    "Head and face": frozenset({"head", "face"}),
    "Face/Orbits/Sinus": frozenset({"face"}),
    "Temporal bone": frozenset({"head"}),
    "Head and neck": frozenset({"head", "face", "neck"}),
    "Neck": frozenset({"neck"}),
    "C-spine": frozenset({"neck"}),
    "C and T spine": frozenset({"neck", "chest"}),
    "T-spine": frozenset({"chest"}),
    "T and L spine": frozenset({"chest", "abdomen"}),
    "L-spine": frozenset({"abdomen"}),
    "Chest": frozenset({"chest"}),
    "Chest-abdomen-pelvis": frozenset({"chest", "abdomen", "pelvis"}),
    "Abdomen": frozenset({"abdomen"}),
    "Abdomen-pelvis": frozenset({"abdomen", "pelvis"}),
    "Pelvis": frozenset({"pelvis"}),
}
assert tuple(COARSE_REGIONS) == BODY_PARTS
