"""Reading DICOM files and talking DICOM on the network."""
