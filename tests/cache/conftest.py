"""Fixture over every supported model family (see cache_models.py)."""

import pytest
from cache_models import CASES


@pytest.fixture(params=sorted(CASES))
def case(request):
    return CASES[request.param]()
