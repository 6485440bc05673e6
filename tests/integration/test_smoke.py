from gateway import consignments
from tests.factories import record
def test_smoke(gw, party):
    actor, key = party.add()
    out = consignments.lodge(gw, actor, record())
    assert out.changed and out.view["version"] == 1
