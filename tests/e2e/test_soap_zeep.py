"""The SOAP service as a partner uses it: zeep over real HTTP against ``roadcargo serve``."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
import zeep
from lxml import etree
from zeep.exceptions import Fault
from zeep.wsse.username import UsernameToken

from gateway.clock import HONG_KONG
from gateway.identifiers import damm_digit
from mappings.xml_eci import element_name
from tests.e2e.conftest import GatewayProcess
from tests.factories import record

ECI = "urn:roadcargo:eci:1"
SOAP = "http://schemas.xmlsoap.org/soap/envelope/"


def as_zeep(value: Any) -> Any:
    """A record in its JSON shape as zeep's keyword arguments: element names, lists as lists."""
    if isinstance(value, dict):
        return {element_name(k): as_zeep(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_zeep(v) for v in value]
    return value


def cargo(reference: str, **overrides: Any) -> dict[str, Any]:
    tomorrow = (datetime.now(HONG_KONG).date() + timedelta(days=1)).isoformat()
    return as_zeep(record(submitter_reference=reference, expected_crossing=tomorrow, **overrides))


@pytest.fixture(scope="module")
def forwarder(gateway_server: GatewayProcess) -> dict[str, Any]:
    return gateway_server.add_party("forwarder", "ACME Freight")


def service(server: GatewayProcess, username: str | None, password: str | None) -> Any:
    wsse = UsernameToken(username, password) if username is not None else None
    return zeep.Client(f"{server.url}/soap/cargo?wsdl", wsse=wsse).service


@pytest.fixture(scope="module")
def soap(gateway_server: GatewayProcess, forwarder: dict[str, Any]) -> Any:
    return service(gateway_server, forwarder["party_id"], forwarder["api_key"])


def fault_errors(fault: Fault) -> list[dict[str, str]]:
    assert fault.detail is not None
    return [dict(e.attrib) for e in fault.detail.iter(f"{{{ECI}}}Error")]


def test_the_wsdl_and_schema_are_served_with_absolute_addresses(gateway_server):
    wsdl = httpx.get(f"{gateway_server.url}/soap/cargo?wsdl")
    assert wsdl.status_code == 200 and wsdl.headers["content-type"].startswith("text/xml")
    root = etree.fromstring(wsdl.content)
    (address,) = root.iter("{http://schemas.xmlsoap.org/wsdl/soap/}address")
    assert address.get("location") == f"{gateway_server.url}/soap/cargo"
    (imported,) = root.iter("{http://www.w3.org/2001/XMLSchema}import")
    assert imported.get("schemaLocation") == f"{gateway_server.url}/soap/eci.xsd"
    xsd = httpx.get(imported.get("schemaLocation"))
    assert xsd.status_code == 200 and etree.fromstring(xsd.content).get("targetNamespace") == ECI


def test_lodge_amend_cancel_and_read_the_status_with_zeep(soap):
    ack = soap.SubmitCargoInformation(
        Consignment=[
            {"action": "lodge", "Record": cargo("SOAP-1")},
            {"action": "lodge", "Record": cargo("SOAP-2")},
        ]
    )
    assert (ack.accepted, ack.rejected) == (2, 0)
    first, second = ack.Consignment
    assert (first.index, first.action, first.result, first.SubmitterReference) == (
        1,
        "lodge",
        "accepted",
        "SOAP-1",
    )
    assert len(first.Ccrn) == 12 and damm_digit(first.Ccrn) == 0 and first.Ccrn != second.Ccrn
    assert (first.Version, first.Status, first.StatusVersion) == (1, "LODGED", 1)

    ack = soap.SubmitCargoInformation(
        Consignment=[
            {"action": "amend", "Ccrn": first.Ccrn, "Record": cargo("SOAP-1", control_point="MKT")},
            {"action": "cancel", "Ccrn": second.Ccrn},
        ]
    )
    amended, cancelled = ack.Consignment
    assert (amended.result, amended.Ccrn, amended.Version, amended.StatusVersion) == (
        "accepted",
        first.Ccrn,
        2,
        2,
    )
    assert (cancelled.result, cancelled.Status, cancelled.SubmitterReference) == (
        "accepted",
        "CANCELLED",
        "SOAP-2",
    )

    status = soap.GetConsignmentStatus(Ccrn=first.Ccrn)
    assert (status.Ccrn, status.SubmitterReference, status.Status, status.Version, status.StatusVersion) == (
        first.Ccrn,
        "SOAP-1",
        "LODGED",
        2,
        2,
    )
    assert soap.GetConsignmentStatus(Ccrn=second.Ccrn).Status == "CANCELLED"


def test_a_mixed_document_answers_each_consignment_on_its_own(soap):
    bad = cargo("SOAP-BAD")
    bad["Item"][0]["PackageCount"] = 0  # zeep does not enforce facets: the server does
    ack = soap.SubmitCargoInformation(
        Consignment=[{"action": "lodge", "Record": bad}, {"action": "lodge", "Record": cargo("SOAP-GOOD")}]
    )
    assert (ack.accepted, ack.rejected) == (1, 1)
    rejected, accepted = ack.Consignment
    assert rejected.result == "rejected" and rejected.Ccrn is None
    (error,) = rejected.Errors.Error
    assert (error.code, error.field) == ("INVALID_VALUE", "items[0].package_count")
    assert error.path == "/Envelope/Body/CargoInformation/Consignment[1]/Record/Item[1]/PackageCount"
    assert error.line >= 1
    assert accepted.result == "accepted" and accepted.Status == "LODGED"


def test_a_driver_bundles_lodged_consignments_with_a_vehicle(gateway_server, soap):
    lodged = soap.SubmitCargoInformation(
        Consignment=[{"action": "lodge", "Record": cargo(f"SOAP-B{i}")} for i in range(2)]
    )
    ccrns = [c.Ccrn for c in lodged.Consignment]
    driver = gateway_server.add_party("driver", "Relief Driver")
    as_driver = service(gateway_server, driver["party_id"], driver["api_key"])
    bundle = as_driver.BundleVehicle(Vehicle="AB1234", ControlPoint="LMC", Ccrn=ccrns)
    assert bundle.BundleId and (bundle.Vehicle, bundle.Driver, bundle.Ccrn) == (
        "AB1234",
        driver["party_id"],
        ccrns,
    )
    assert bundle.EarliestCrossing > datetime.now(HONG_KONG) + timedelta(minutes=29)  # bundle lead time
    assert bundle.Slot.Start < bundle.Slot.End and bundle.EarliestCrossing < bundle.Slot.End
    assert soap.GetConsignmentStatus(Ccrn=ccrns[0]).Status == "BUNDLED"

    with pytest.raises(Fault) as caught:  # a CCRN is in at most one live bundle
        as_driver.BundleVehicle(Vehicle="CD5678", ControlPoint="LMC", Ccrn=[ccrns[1]])
    assert caught.value.code == "soap:Client"
    assert [(e["code"], e["field"]) for e in fault_errors(caught.value)] == [("ALREADY_BUNDLED", "ccrns[0]")]


def test_a_forwarder_may_not_bundle(soap):
    ack = soap.SubmitCargoInformation(Consignment=[{"action": "lodge", "Record": cargo("SOAP-F")}])
    with pytest.raises(Fault) as caught:
        soap.BundleVehicle(Vehicle="EF9012", ControlPoint="LMC", Ccrn=[ack.Consignment[0].Ccrn])
    assert caught.value.code == "soap:Client"
    assert [e["code"] for e in fault_errors(caught.value)] == ["FORBIDDEN"]
    assert soap.GetConsignmentStatus(Ccrn=ack.Consignment[0].Ccrn).Status == "LODGED"


def test_calls_without_or_with_a_wrong_username_token_are_unauthorized(gateway_server, forwarder):
    other = gateway_server.add_party("forwarder", "Other Freight")
    for username, password in [
        (None, None),
        (forwarder["party_id"], "rcg_wrong"),
        (other["party_id"], forwarder["api_key"]),  # a real key, but not this party's
        ("", forwarder["api_key"]),
    ]:
        with pytest.raises(Fault) as caught:
            service(gateway_server, username, password).GetConsignmentStatus(Ccrn="504127796023")
        assert caught.value.code == "soap:Client"
        assert [e["code"] for e in fault_errors(caught.value)] == ["UNAUTHORIZED"], (username, password)


def test_another_filers_ccrn_is_not_found_like_an_unknown_one(gateway_server, soap):
    ccrn = (
        soap.SubmitCargoInformation(Consignment=[{"action": "lodge", "Record": cargo("SOAP-X")}])
        .Consignment[0]
        .Ccrn
    )
    other = gateway_server.add_party("forwarder", "Another Freight")
    theirs = service(gateway_server, other["party_id"], other["api_key"])
    unknown = "12345678901"
    unknown += str(damm_digit(unknown))
    messages = []
    for number in (ccrn, unknown):
        with pytest.raises(Fault) as caught:
            theirs.GetConsignmentStatus(Ccrn=number)
        assert caught.value.code == "soap:Client"
        (error,) = fault_errors(caught.value)
        messages.append((error["code"], error["message"].replace(number, "N")))
    assert messages[0] == messages[1] and messages[0][0] == "NOT_FOUND"
    ack = theirs.SubmitCargoInformation(Consignment=[{"action": "cancel", "Ccrn": ccrn}])
    assert ack.Consignment[0].Errors.Error[0].code == "NOT_FOUND"
    assert soap.GetConsignmentStatus(Ccrn=ccrn).Status == "LODGED"


def test_a_wrong_check_digit_is_a_client_fault(soap):
    with pytest.raises(Fault) as caught:
        soap.GetConsignmentStatus(Ccrn="123456789012")
    assert [e["code"] for e in fault_errors(caught.value)] == ["CCRN_CHECK_DIGIT"]


def _envelope(body: str, header: str = "") -> bytes:
    return (
        f'<soap:Envelope xmlns:soap="{SOAP}"><soap:Header>{header}</soap:Header>'
        f"<soap:Body>{body}</soap:Body></soap:Envelope>"
    ).encode()


@pytest.mark.parametrize(
    ("body", "faultcode", "code"),
    [
        (b"", "soap:Client", "MALFORMED"),
        (b"this is not xml", "soap:Client", "MALFORMED"),
        (b'<a xmlns="urn:x"/>', "soap:Client", "MALFORMED"),
        (_envelope("")[:-20], "soap:Client", "MALFORMED"),
        (
            b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>' + _envelope("&e;"),
            "soap:Client",
            "XML_FORBIDDEN",
        ),
        (
            b'<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"><e:Body/></e:Envelope>',
            "soap:VersionMismatch",
            "MALFORMED",
        ),
        (
            _envelope(
                f'<GetConsignmentStatus xmlns="{ECI}"><Ccrn>504127796023</Ccrn></GetConsignmentStatus>'
            ),
            "soap:Client",
            "UNAUTHORIZED",
        ),
        (
            _envelope("", '<x:Tx xmlns:x="urn:x" soap:mustUnderstand="1"/>'),
            "soap:MustUnderstand",
            "INVALID_VALUE",
        ),
        (_envelope("<a/><b/>"), "soap:Client", "MALFORMED"),
    ],
)
def test_malformed_envelopes_get_a_fault_never_a_bare_500(gateway_server, body, faultcode, code):
    response = httpx.post(
        f"{gateway_server.url}/soap/cargo", content=body, headers={"Content-Type": "text/xml"}
    )
    assert response.status_code == 500 and response.headers["content-type"].startswith("text/xml")
    fault = etree.fromstring(response.content).find(f"{{{SOAP}}}Body/{{{SOAP}}}Fault")
    assert fault is not None and fault.findtext("faultcode") == faultcode
    assert [e.get("code") for e in fault.iter(f"{{{ECI}}}Error")] == [code]


def test_an_unknown_or_invalid_request_is_a_client_fault_naming_it(gateway_server, forwarder):
    token = (
        '<wsse:Security xmlns:wsse="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd">'
        f"<wsse:UsernameToken><wsse:Username>{forwarder['party_id']}</wsse:Username>"
        f"<wsse:Password>{forwarder['api_key']}</wsse:Password></wsse:UsernameToken></wsse:Security>"
    )
    for body, code in [
        (f'<Launch xmlns="{ECI}"/>', "INVALID_VALUE"),
        (f'<GetConsignmentStatus xmlns="{ECI}"><Ccrn>12</Ccrn></GetConsignmentStatus>', "INVALID_VALUE"),
    ]:
        response = httpx.post(f"{gateway_server.url}/soap/cargo", content=_envelope(body, token))
        assert response.status_code == 500
        fault = etree.fromstring(response.content).find(f"{{{SOAP}}}Body/{{{SOAP}}}Fault")
        assert fault is not None and fault.findtext("faultcode") == "soap:Client"
        errors = list(fault.iter(f"{{{ECI}}}Error"))
        assert [e.get("code") for e in errors] == [code]
    assert errors[0].get("path") == "/Envelope/Body/GetConsignmentStatus/Ccrn"
