"""Receiving: the DICOM SCP (C-ECHO, C-STORE), validation, and the durable spool."""
