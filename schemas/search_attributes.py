"""Custom search attributes (docs/ARCHITECTURE.md §4): the UI's filters, all Keyword."""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

RETAILER_ID = SearchAttributeKey.for_keyword("RetailerId")
COMPANY_ID = SearchAttributeKey.for_keyword("CompanyId")
CUSTOMER_ID = SearchAttributeKey.for_keyword("CustomerId")
ORDER_ID = SearchAttributeKey.for_keyword("OrderId")
CASE_STATUS = SearchAttributeKey.for_keyword("CaseStatus")
JOB_NAME = SearchAttributeKey.for_keyword("JobName")

ALL = (RETAILER_ID, COMPANY_ID, CUSTOMER_ID, ORDER_ID, CASE_STATUS, JOB_NAME)
