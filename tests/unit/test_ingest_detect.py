"""How a file's format is told from its first bytes (adapters/ingest.py)."""

from __future__ import annotations

import pytest

from adapters.ingest import IngestError, detect


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"UNA:+.? 'UNB+UNOC:3+X+Y", "edifact"),
        (b"UNB+UNOA:3+X+Y", "edifact"),
        (b"\r\n  \tUNB+UNOA:3", "edifact"),
        (b'<?xml version="1.0"?><CargoInformation/>', "xml"),
        (b"\xef\xbb\xbf\n<CargoInformation/>", "xml"),
    ],
)
def test_edifact_and_xml_are_told_by_their_first_non_blank_bytes(head, kind):
    assert detect(head) == kind


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        (b"", "empty"),
        (b" \r\n\t", "empty"),
        (b"%PDF-1.7\x00\x01", "neither EDIFACT"),
        (b"UNH+1+CUSCAR", "UNB"),
    ],
)
def test_anything_else_is_refused_with_the_reason(head, reason):
    with pytest.raises(IngestError, match=reason):
        detect(head)
