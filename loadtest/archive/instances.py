"""Encoding each planned file from a header template per series.

CT images are CT Image Storage in JPEG 2000 Lossless (1.2.840.10008.1.2.4.90)
and make up almost the whole archive. The non-pixel objects are Basic Text SR
and Key Object Selection documents in Explicit VR Little Endian. For both,
pydicom encodes what a series shares once
(:class:`~loadtest.archive.header.HeaderTemplate`) and each file fills in its
SOP Instance UID, patient demographics and position. Elements that every CT
image of a run shares, the Image Pixel module among them, are encoded once per run.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, JPEG2000Lossless

from loadtest.archive.header import FileMetaTemplate, HeaderTemplate, encode_elements
from loadtest.archive.layout import CT, SR, PlannedFile, SeriesPlan, StudyPlan, make_uid
from loadtest.archive.pixels import PixelTemplates

#: The character set every generated file declares: ISO 8859-1, Python's latin_1.
SPECIFIC_CHARACTER_SET = "ISO_IR 100"
ENCODING = "latin_1"

#: Elements of a CT image that differ from file to file within a series.
CT_SLOTS = (
    "SOPInstanceUID",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "InstanceNumber",
    "ImagePositionPatient",
    "SliceLocation",
)
#: Elements of an SR or KOS document that differ from file to file within a series.
NONPIXEL_SLOTS = ("SOPInstanceUID", "PatientName", "PatientID", "PatientBirthDate", "InstanceNumber")

#: Slice thickness and spacing in mm, by series number.
_SLICE_THICKNESS = {1: 5.0, 2: 2.5, 3: 1.25}
_MANUFACTURERS = (("SIEMENS", "SOMATOM Definition AS"), ("GE MEDICAL SYSTEMS", "Revolution CT"),
                  ("Philips", "Ingenuity CT"), ("TOSHIBA", "Aquilion ONE"))


def _series_time(study: StudyPlan, series: SeriesPlan) -> str:
    """Return the study time plus two minutes per series as HHMMSS, at most 235959."""
    seconds = int(study.time[:2]) * 3600 + int(study.time[2:4]) * 60 + int(study.time[4:])
    seconds = min(seconds + 120 * series.number, 86_399)
    return f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"


def _series_elements(study: StudyPlan, series: SeriesPlan, sop_class_uid: str) -> Dataset:
    """Return the SOP Common, Patient, General Study and General Series values a series shares."""
    ds = Dataset()
    ds.SpecificCharacterSet = SPECIFIC_CHARACTER_SET
    ds.InstanceCreationDate = study.storage_date
    ds.InstanceCreationTime = _series_time(study, series)
    ds.SOPClassUID = sop_class_uid
    ds.StudyDate = study.storage_date
    ds.SeriesDate = study.storage_date
    ds.ContentDate = study.storage_date
    ds.StudyTime = study.time
    ds.SeriesTime = _series_time(study, series)
    ds.ContentTime = _series_time(study, series)
    ds.AccessionNumber = study.accession_number
    ds.Modality = series.kind
    ds.Manufacturer = _MANUFACTURERS[study.index % len(_MANUFACTURERS)][0]
    ds.StudyDescription = study.description
    ds.SeriesDescription = series.description
    ds.PatientSex = study.patient.sex
    ds.StudyInstanceUID = study.uid
    ds.SeriesInstanceUID = series.uid
    ds.StudyID = str(study.index + 1)
    ds.SeriesNumber = series.number
    return ds


def _ct_run_elements(pixels: PixelTemplates) -> list[tuple[int, bytes]]:
    """Encode the elements that every CT image of a run shares, the Image Pixel module among them."""
    ds = Dataset()
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstitutionName = "LOADTEST GENERAL HOSPITAL"
    ds.ReferringPhysicianName = "REFERRER^DEMO"
    ds.BodyPartExamined = "HEAD"
    ds.KVP = "120"
    ds.ReconstructionDiameter = "245"
    ds.ExposureTime = "1000"
    ds.XRayTubeCurrent = "250"
    ds.PatientPosition = "HFS"
    ds.AcquisitionNumber = "1"
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PositionReferenceIndicator = "OM"
    ds.update(pixels.pixel_module)
    ds.WindowCenter = "40"
    ds.WindowWidth = "80"
    ds.LossyImageCompression = "00"
    return encode_elements(ds, ENCODING)


class ImageEncoders:
    """Makes the :class:`CTSeriesEncoder` of each series from the run's shared parts."""

    def __init__(self, pixels: PixelTemplates, seed: int) -> None:
        self.pixels = pixels
        self.seed = seed
        self.run_elements = _ct_run_elements(pixels)
        self.meta = FileMetaTemplate(CTImageStorage, JPEG2000Lossless)

    def for_series(self, study: StudyPlan, series: SeriesPlan) -> CTSeriesEncoder:
        return CTSeriesEncoder(self, study, series)


class CTSeriesEncoder:
    """Renders the CT images of one series: a header template and the run's frames."""

    def __init__(self, shared: ImageEncoders, study: StudyPlan, series: SeriesPlan) -> None:
        fixed = _series_elements(study, series, CTImageStorage)
        fixed.AcquisitionDate = study.storage_date
        fixed.AcquisitionTime = _series_time(study, series)
        fixed.ManufacturerModelName = _MANUFACTURERS[study.index % len(_MANUFACTURERS)][1]
        self.thickness = _SLICE_THICKNESS.get(series.number, 5.0)
        fixed.SliceThickness = f"{self.thickness:g}"
        fixed.ConvolutionKernel = "H70h" if series.number == 3 else "H30s"
        fixed.FrameOfReferenceUID = make_uid(shared.seed, "frame-of-reference", study.index)
        self._header = HeaderTemplate(fixed, CT_SLOTS, ENCODING, shared.run_elements)
        self._meta = shared.meta
        self._frames = shared.pixels.frames

    def encode(self, file: PlannedFile) -> tuple[bytes, bytes]:
        """Return the file's bytes up to Pixel Data, and its encoded Pixel Data element."""
        z = 60.0 - file.position * self.thickness
        patient = file.header_patient
        head = self._meta.render(file.sop_instance_uid) + self._header.render((
            file.sop_instance_uid,
            patient.name,
            patient.patient_id,
            patient.birth_date,
            str(file.position + 1),
            f"-122.500\\-112.400\\{z:.3f}",
            f"{z:.3f}",
        ))
        frame = self._frames[file.instance_index % len(self._frames)]
        return head, frame.pixel_data_element


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _sr_content(ds: Dataset, concept: Dataset, items: list[Dataset]) -> None:
    """Set the root CONTAINER of the SR Document Content module."""
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = Sequence([concept])
    ds.ContinuityOfContent = "SEPARATE"
    ds.ContentSequence = Sequence(items)


def _text_report(ds: Dataset) -> None:
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ReferencedPerformedProcedureStepSequence = Sequence()
    ds.PerformedProcedureCodeSequence = Sequence()
    finding = Dataset()
    finding.RelationshipType = "CONTAINS"
    finding.ValueType = "TEXT"
    finding.ConceptNameCodeSequence = Sequence([_code("121071", "DCM", "Finding")])
    finding.TextValue = "Synthetic report written for a load test. It has no clinical content."
    _sr_content(ds, _code("18748-4", "LN", "Diagnostic imaging report"), [finding])


def _key_object_selection(ds: Dataset, study: StudyPlan, seed: int) -> None:
    """Reference up to three images of the study's first series as key images."""
    first_series = study.series[0]
    references = []
    items = []
    for position in range(min(3, first_series.size) if first_series.kind == CT else 0):
        reference = Dataset()
        reference.ReferencedSOPClassUID = CTImageStorage
        reference.ReferencedSOPInstanceUID = make_uid(seed, "instance", study.first_instance + position)
        references.append(reference)

        item = Dataset()
        item.RelationshipType = "CONTAINS"
        item.ValueType = "IMAGE"
        item.ReferencedSOPSequence = Sequence([reference])
        items.append(item)

    ds.ReferencedPerformedProcedureStepSequence = Sequence()
    evidence = []
    if references:
        series_reference = Dataset()
        series_reference.SeriesInstanceUID = first_series.uid
        series_reference.ReferencedSOPSequence = Sequence(references)
        study_reference = Dataset()
        study_reference.StudyInstanceUID = study.uid
        study_reference.ReferencedSeriesSequence = Sequence([series_reference])
        evidence.append(study_reference)
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence(evidence)

    template = Dataset()
    template.MappingResource = "DCMR"
    template.TemplateIdentifier = "2010"  # Key Object Selection (PS3.16 TID 2010)
    ds.ContentTemplateSequence = Sequence([template])
    _sr_content(ds, _code("113000", "DCM", "Of Interest"), items)


class NonPixelSeriesEncoder:
    """Renders the Basic Text SR or Key Object Selection documents of one series."""

    def __init__(self, study: StudyPlan, series: SeriesPlan, sop_class_uid: str,
                 transfer_syntax: str, seed: int) -> None:
        fixed = _series_elements(study, series, sop_class_uid)
        if series.kind == SR:
            _text_report(fixed)
        else:
            _key_object_selection(fixed, study, seed)
        self._header = HeaderTemplate(fixed, NONPIXEL_SLOTS, ENCODING)
        self._meta = FileMetaTemplate(sop_class_uid, transfer_syntax)

    def encode(self, file: PlannedFile) -> bytes:
        """Return the whole Part 10 file."""
        patient = file.header_patient
        return self._meta.render(file.sop_instance_uid) + self._header.render((
            file.sop_instance_uid,
            patient.name,
            patient.patient_id,
            patient.birth_date,
            str(file.position + 1),
        ))
