"""The web portal (design section 9): server-rendered pages at ``/`` for filers, drivers, officers and
the kiosk display, on the same service functions as every other channel.

``router`` is mounted by the composition root; the pages live in one module per audience, the session,
CSRF and language machinery in ``web``, the consignment form in ``forms``, the barcode in ``barcode``.
"""

from __future__ import annotations

from fastapi import APIRouter

from adapters.portal import pages_driver, pages_filer, pages_officer, pages_public, pages_risk

router = APIRouter()
router.include_router(pages_public.router)
router.include_router(pages_filer.router)
router.include_router(pages_driver.router)
router.include_router(pages_officer.router)
router.include_router(pages_risk.router)
