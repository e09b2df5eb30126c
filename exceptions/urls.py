from django.urls import path

from exceptions.views import actions, pages

app_name = "exceptions"

urlpatterns = [
    path("", pages.case_list, name="case-list"),
    path("mine/", pages.my_work, name="my-work"),
    path("<int:pk>/", pages.case_detail, name="case-detail"),
    path("<int:pk>/retry/", actions.retry, name="case-retry"),
    path("<int:pk>/replay/", actions.replay, name="case-replay"),
    path("<int:pk>/acknowledge/", actions.acknowledge, name="case-acknowledge"),
    path("<int:pk>/assign-to-me/", actions.assign_to_me, name="case-assign-to-me"),
    path("<int:pk>/resolve/", actions.resolve, name="case-resolve"),
    path("<int:pk>/dismiss/", actions.dismiss, name="case-dismiss"),
]
