"""DICOM in and out for ultrasound: reading (decode, regions, frame choice, patient inputs) and
writing (SEG, TID 1500 SR, key image). Knows nothing of Celery, sockets or the model internals.

Importing this package is cheap (pydicom only): the listener uses `classify_instance` and
`is_own_output` on every received header. Writers (highdicom) load only when used.
"""

from llnm.dicom.classify import classify_instance, is_own_output

__all__ = ["classify_instance", "is_own_output"]
