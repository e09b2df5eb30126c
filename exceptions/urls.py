from django.urls import path

from exceptions.views import actions, bulk, pages, queue

app_name = "exceptions"

urlpatterns = [
    path("", queue.case_list, name="case-list"),
    path("mine/", queue.my_work, name="my-work"),
    path("lanes/<slug:slug>/", queue.lane_queue, name="lane"),
    path("counts/", queue.counts, name="counts"),
    path("export.csv", queue.export_csv, name="export"),
    path("bulk/", bulk.bulk_confirm, name="bulk"),
    path("bulk/<int:pk>/", bulk.bulk_progress, name="bulk-progress"),
    path("<int:pk>/", pages.case_detail, name="case-detail"),
    path("<int:pk>/retry/", actions.retry, name="case-retry"),
    path("<int:pk>/replay/", actions.replay, name="case-replay"),
    path("<int:pk>/acknowledge/", actions.acknowledge, name="case-acknowledge"),
    path("<int:pk>/assign-to-me/", actions.assign_to_me, name="case-assign-to-me"),
    path("<int:pk>/assign/", actions.assign, name="case-assign"),
    path("<int:pk>/compensate/", actions.compensate, name="case-compensate"),
    path("<int:pk>/fix/lookup/", actions.fix_lookup, name="case-fix-lookup"),
    path("<int:pk>/fix/customer/", actions.fix_customer, name="case-fix-customer"),
    path("<int:pk>/resolve/", actions.resolve, name="case-resolve"),
    path("<int:pk>/dismiss/", actions.dismiss, name="case-dismiss"),
]
