"""The DICOM Structured Report of a classified series (docs/structured-report.md).

    report = build_report(results, header, evidence, generation)   # a highdicom SR document, or ReportSkipped
    report.save_as(path)

Built from the delivery plan's frozen results (node.results) and the headers of the spooled instances
alone: nothing is classified again.
"""

from node.report.build import ReportSkipped, build_report
from node.report.uids import ReportUids, report_uids

__all__ = ["ReportSkipped", "ReportUids", "build_report", "report_uids"]
