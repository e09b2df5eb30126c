from rest_framework.views import exception_handler as drf_exception_handler


def exception_handler(exc, context):
    """Give every API error a JSON body with a ``message`` a person can act on."""
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    data = response.data
    if isinstance(data, dict) and "detail" in data and len(data) == 1:
        response.data = {"message": str(data["detail"]), "code": getattr(data["detail"], "code", "error")}
    elif isinstance(data, (dict, list)):
        response.data = {"message": "The request is invalid.", "code": "invalid", "errors": data}
    return response


def not_found(request, exception=None):
    """Answer 404 in JSON under /api/, and with Django's page elsewhere."""
    from django.http import JsonResponse
    from django.views.defaults import page_not_found

    if request.path_info.startswith("/api/"):
        return JsonResponse(
            {"message": f"Nothing is found at {request.path_info}.", "code": "not_found"},
            status=404,
        )
    return page_not_found(request, exception)
