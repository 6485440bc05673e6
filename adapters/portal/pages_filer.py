"""Filers' pages: lodge through a form, list and search, the consignment page with its CCRN and barcode,
amend, cancel, and uploading an EDIFACT or XML file to see its replies."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.datastructures import UploadFile

from adapters.portal import barcode, forms
from adapters.portal.web import Page, message, serve, svg_markup
from gateway import codelists, consignments, declarations
from gateway.context import FILER_ROLES, store_raw
from gateway.errors import GatewayError
from gateway.identifiers import parse_ccrn

router = APIRouter()
STATUSES = ("LODGED", "BUNDLED", "ARRIVED", "CROSSED", "HELD", "DECLARED", "CANCELLED", "EXPIRED")
FORM_TYPE = "application/x-www-form-urlencoded"
READERS = (*FILER_ROLES, "officer")  # officers read any consignment (contingency, inspections)


def _codes() -> dict[str, Any]:
    """The code lists the form offers as suggestions (and portal.js checks against, as you type)."""
    return {
        "countries": sorted(codelists.countries()),
        "currencies": sorted(codelists.currencies()),
        "package_types": sorted(codelists.package_types().items()),
    }


def _error_links(page: Page, form: forms.RecordForm) -> list[tuple[str, str]]:
    """The summary above the form: each problem as a link to its input, in the order of the form."""
    order = {name: i for i, name in enumerate(sorted(form.names()))}
    links = []
    for name in sorted(form.errors, key=lambda n: order.get(n, 0)):
        key, row = forms.label_of(name)
        where = page.t(key)
        if name.startswith(("consignor.", "consignee.")):
            where = f"{page.t('f.' + name.partition('.')[0])}: {where}"
        elif row is not None:
            row_key = "lodge.item_n" if name.startswith("items") else "lodge.container_n"
            where = f"{page.t(row_key, n=row)}: {where}"
        links.append((forms.input_id(name), f"{where}: {'; '.join(form.errors[name])}"))
    return links


def _render_form(page: Page, form: forms.RecordForm, ccrn: str | None, status: int = 200) -> Response:
    return page.render(
        "record_form.html",
        status=status,
        error_links=_error_links(page, form),
        form=form,
        ccrn=ccrn,
        control_points=page.gw.config.control_points,
        codes=_codes(),
        item_fields=forms.ITEM_FIELDS,
        party_fields=forms.PARTY_FIELDS,
    )


def _rearranged(page: Page, form: forms.RecordForm) -> forms.RecordForm | None:
    """The form again with rows added or removed, when a row button (not Submit) was pressed; the
    same buttons work without JavaScript."""
    action = page.value("_action")
    if action == "rows":

        def count(name: str, default: int) -> int:
            text = page.value(name).strip()
            return int(text) if text.isdigit() and len(text) < 5 else default

        return forms.resized(form, count("item_count", form.items), count("equipment_count", form.equipment))
    if action == "add_item":
        return forms.resized(form, form.items + 1, form.equipment)
    if action == "add_equipment":
        return forms.resized(form, form.items, form.equipment + 1)
    kind, _, index = action.partition(":")
    if kind in ("remove_items", "remove_equipment") and index.isdigit():
        return forms.without_row(form, kind.removeprefix("remove_"), int(index))
    return None


@router.get("/consignments", include_in_schema=False)
async def list_page(request: Request, status: str = "", reference: str = "", offset: str = "0") -> Response:
    def work(page: Page) -> Response:
        assert page.actor is not None
        wanted = status if status in STATUSES else None
        start = int(offset) if offset.isdigit() and len(offset) < 7 else 0
        rows = consignments.list_consignments(
            page.gw,
            page.actor,
            status=wanted,
            reference=reference.strip() or None,
            limit=50,
            offset=start,
        )
        return page.render(
            "consignments.html",
            rows=rows,
            statuses=STATUSES,
            chosen=wanted or "",
            reference=reference,
            offset=start,
        )

    return await serve(request, work, roles=FILER_ROLES)


@router.get("/consignments/new", include_in_schema=False)
async def new_form(request: Request, items: int = 1, equipment: int = 0) -> Response:
    return await serve(
        request,
        lambda page: _render_form(page, forms.resized(forms.blank(), items, equipment), None),
        roles=FILER_ROLES,
    )


@router.post("/consignments/new", include_in_schema=False)
async def lodge(request: Request) -> Response:
    def work(page: Page) -> Response:
        assert page.actor is not None and page.form is not None
        form = forms.from_post(page.form)
        again = _rearranged(page, form)
        if again is not None:
            return _render_form(page, again, None)
        raw_id = store_raw(page.gw, page.actor, FORM_TYPE, page.body)
        try:
            outcome = consignments.lodge(page.gw, page.actor, forms.to_record(form), raw_id)
        except GatewayError as exc:
            forms.place_problems(form, exc.problems)
            return _render_form(page, form, None, status=422)
        return page.redirect(f"/consignments/{outcome.view['ccrn']}?lodged=1")

    return await serve(request, work, roles=FILER_ROLES)


@router.get("/consignments/{ccrn}", include_in_schema=False)
async def consignment_page(request: Request, ccrn: str, lodged: int = 0, amended: int = 0) -> Response:
    def work(page: Page) -> Response:
        assert page.actor is not None
        view = consignments.get(page.gw, page.actor, ccrn)
        versions = consignments.history(page.gw, page.actor, view["ccrn"])
        return page.render(
            "consignment.html",
            c=view,
            r=view["record"],
            versions=versions,
            barcode=svg_markup(
                barcode.svg(view["ccrn"], title=page.t("consignment.barcode_of", ccrn=view["ccrn"]))
            ),
            lodged=bool(lodged),
            amended=bool(amended),
            changeable=view["status"] in consignments.LIVE and page.role in FILER_ROLES,
            declarable=view["status"] in declarations.CROSSED
            and not view["record"].get("transhipment")
            and page.role in FILER_ROLES,
            declaration_days=page.gw.config.rules.declaration_deadline_days,
        )

    return await serve(request, work, roles=READERS)


@router.get("/consignments/{ccrn}/barcode.svg", include_in_schema=False)
async def barcode_svg(request: Request, ccrn: str) -> Response:
    def work(page: Page) -> Response:
        assert page.actor is not None
        view = consignments.get(page.gw, page.actor, ccrn)  # only the filer's own: NOT_FOUND otherwise
        return page.finish(Response(barcode.svg(view["ccrn"]), media_type="image/svg+xml"))

    return await serve(request, work, roles=READERS)


@router.get("/find", include_in_schema=False)
async def find(request: Request, ccrn: str = "") -> Response:
    """A CCRN as typed (spaces allowed) to its page; the check digit is checked before any lookup."""

    def work(page: Page) -> Response:
        return page.redirect(f"/consignments/{parse_ccrn(ccrn)}")

    return await serve(request, work, roles=READERS)


@router.get("/consignments/{ccrn}/amend", include_in_schema=False)
async def amend_form(request: Request, ccrn: str) -> Response:
    def work(page: Page) -> Response:
        assert page.actor is not None
        view = consignments.get(page.gw, page.actor, ccrn)
        if view["status"] not in consignments.LIVE:
            return message(
                page,
                "error.refused_title",
                page.t("consignment.frozen", status=page.t("status." + view["status"])),
                status=409,
                links=[(f"/consignments/{view['ccrn']}", "nav.back")],
            )
        return _render_form(page, forms.from_record(view["record"]), view["ccrn"])

    return await serve(request, work, roles=FILER_ROLES)


@router.post("/consignments/{ccrn}/amend", include_in_schema=False)
async def amend(request: Request, ccrn: str) -> Response:
    def work(page: Page) -> Response:
        assert page.actor is not None and page.form is not None
        number = parse_ccrn(ccrn)
        form = forms.from_post(page.form)
        again = _rearranged(page, form)
        if again is not None:
            return _render_form(page, again, number)
        raw_id = store_raw(page.gw, page.actor, FORM_TYPE, page.body)
        try:
            consignments.amend(page.gw, page.actor, number, forms.to_record(form), raw_id)
        except GatewayError as exc:
            if exc.http_status == 404:
                raise
            forms.place_problems(form, exc.problems)
            return _render_form(page, form, number, status=exc.http_status)
        return page.redirect(f"/consignments/{number}?amended=1")

    return await serve(request, work, roles=FILER_ROLES)


@router.get("/consignments/{ccrn}/cancel", include_in_schema=False)
async def cancel_form(request: Request, ccrn: str) -> Response:
    def work(page: Page) -> Response:
        assert page.actor is not None
        view = consignments.get(page.gw, page.actor, ccrn)
        return page.render("cancel.html", c=view)

    return await serve(request, work, roles=FILER_ROLES)


@router.post("/consignments/{ccrn}/cancel", include_in_schema=False)
async def cancel(request: Request, ccrn: str) -> Response:
    def work(page: Page) -> Response:
        assert page.actor is not None
        number = parse_ccrn(ccrn)
        raw_id = store_raw(page.gw, page.actor, FORM_TYPE, page.body)
        consignments.cancel(page.gw, page.actor, number, raw_id)
        return page.redirect(f"/consignments/{number}")

    return await serve(request, work, roles=FILER_ROLES)


# -- uploading an EDIFACT or XML file ----------------------------------------------------------------


@router.get("/upload", include_in_schema=False)
async def upload_form(request: Request) -> Response:
    return await serve(
        request,
        lambda page: page.render("upload.html", replies=None, error=None, filename=""),
        roles=FILER_ROLES,
    )


@router.post("/upload", include_in_schema=False)
async def upload(request: Request) -> Response:
    def work(page: Page) -> Response:
        from adapters import ingest  # the shared file path of the SFTP mailbox and the CLI

        assert page.actor is not None and page.form is not None
        sent = page.form.get("file")
        if not isinstance(sent, UploadFile) or not sent.filename:
            return page.render(
                "upload.html", status=422, replies=None, error=page.t("upload.no_file"), filename=""
            )
        name = Path(sent.filename).name[:100]
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "upload"
            path.write_bytes(sent.file.read())
            try:
                replies = ingest.ingest_file(page.gw, page.actor, path)
            except ingest.IngestError as exc:
                return page.render("upload.html", status=422, replies=None, error=str(exc), filename=name)
        shown = [(name + suffix, body.decode("utf-8", "replace")) for suffix, body in replies.items()]
        return page.render("upload.html", replies=shown, error=None, filename=name)

    return await serve(request, work, roles=FILER_ROLES)


# -- the prefilled trade declaration ---------------------------------------------------------


@router.get("/consignments/{ccrn}/declaration", include_in_schema=False)
async def declaration_page(request: Request, ccrn: str) -> Response:
    """The declaration prefilled from the record: what is missing, the ledger, and the downloads; for
    the filer and the declaration agents it granted."""

    def work(page: Page) -> Response:
        assert page.actor is not None
        document = declarations.prefill(page.gw, page.actor, ccrn)
        written_off = declarations.declarations_of(page.gw, page.actor, document["ccrn"])
        return page.render(
            "declaration.html", d=document, ledger=written_off["ledger"], state=written_off["status"]
        )

    return await serve(request, work, roles=FILER_ROLES)


@router.get("/consignments/{ccrn}/declaration/download", include_in_schema=False)
async def declaration_download(request: Request, ccrn: str, format: str = "json") -> Response:
    def work(page: Page) -> Response:
        from adapters.http_declarations import FORMATS, render

        assert page.actor is not None
        form = format if format in FORMATS else "json"
        document = declarations.prefill(page.gw, page.actor, ccrn)
        suffix = {"json": "json", "xml": "xml", "edifact": "edi"}[form]
        body = render(page.gw, page.actor, [document], form)
        name = f"declaration-{document['ccrn']}.{suffix}"
        return page.finish(
            Response(
                body,
                media_type=FORMATS[form],
                headers={"Content-Disposition": f'attachment; filename="{name}"'},
            )
        )

    return await serve(request, work, roles=FILER_ROLES)
