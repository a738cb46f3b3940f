"""A night's insight rows, derived a page at a time, are the rows one retailer's insight would be."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from activities.insights import _insight_row, _page_json, _stats_from_row

DAY = date(2026, 11, 23)
money = st.decimals(min_value=0, max_value=10**9, places=2, allow_nan=False, allow_infinity=False)
rate = st.none() | st.decimals(min_value=0, max_value=1, places=20, allow_nan=False, allow_infinity=False)
days = st.none() | st.decimals(min_value=0, max_value=400, places=20, allow_nan=False, allow_infinity=False)
row = st.tuples(
    st.integers(min_value=1, max_value=10**12),  # retailer_id
    st.none() | st.sampled_from(["Amina Stores", "Asha Rao", "  Li", "Zoë"]),  # name
    st.integers(min_value=0, max_value=500),  # orders_30d
    st.integers(min_value=0, max_value=500),  # orders_prev_30d
    money,  # gmv_30d
    money,  # gmv_prev_30d
    st.lists(st.sampled_from(["Tea", "Rice", "Sugar", "Öl 1L", 'Chai "Gold"']), max_size=3, unique=True),
    rate,  # on_time_rate, as avg() returns it: more places than the column keeps
    days,  # avg_days_to_pay
    st.decimals(min_value=-1000, max_value=10**7, places=2, allow_nan=False, allow_infinity=False),  # outstanding
    st.integers(min_value=0, max_value=120),  # max_overdue_days
    st.none() | st.just(Decimal(0)) | money,  # credit_limit
    st.sampled_from(["USD", "INR", "EUR", "JPY"]),  # currency
    st.none() | st.sampled_from(["en", "en-IN", "es-ES", "de-DE", "ja-JP"]),  # locale
)


@given(rows=st.lists(row, min_size=1, max_size=5))
def test_a_page_writes_what_each_retailers_insight_would(rows: list[tuple]) -> None:
    # The per-retailer path (InsightStats, render_insight_message) is the reference: the page's one
    # loop must write the same figures, rounded the same way, and the same message.
    page = json.loads(_page_json(rows))
    expected = []
    for r in rows:
        one = _insight_row(_stats_from_row(r), DAY)
        del one["insight_date"]  # the statement binds the day on its own
        expected.append(json.loads(json.dumps(one, default=str)))
    assert page == expected
