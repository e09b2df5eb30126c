from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied

from meshline.roles import can

# Paths open without a login: CRM deliveries authenticate by signature, the
# health check is for load balancers, and the login page must be reachable.
PUBLIC_PREFIXES = ("/api/v1/inbound/", "/health/", "/accounts/login/", "/static/")


class LoginRequiredMiddleware:
    """Send anonymous requests to the login page, except for public paths, and
    refuse console pages to users without a Meshline role.

    API requests are left to DRF, which answers 403 with a JSON error instead of
    a redirect."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        path = request.path_info
        if path.startswith(PUBLIC_PREFIXES) or path.startswith("/api/"):
            return self.get_response(request)
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path(), settings.LOGIN_URL)
        # Every console page needs a Meshline role; the Django admin checks
        # is_staff itself, and log-out must stay reachable.
        if not path.startswith(("/admin/", "/accounts/")) and not can(request.user, "view"):
            raise PermissionDenied(
                "Your account has no Meshline role. Ask an admin to add you to a role group."
            )
        return self.get_response(request)


class ContentSecurityPolicyMiddleware:
    """Send ``settings.CONTENT_SECURITY_POLICY`` on every response.

    The Django admin ships inline scripts and styles, so its pages get a policy
    that also allows inline code, still limited to this origin."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        policy = settings.CONTENT_SECURITY_POLICY
        if request.path_info.startswith("/admin/"):
            policy = policy.replace("script-src 'self'", "script-src 'self' 'unsafe-inline'").replace(
                "style-src 'self'", "style-src 'self' 'unsafe-inline'"
            )
        response.headers.setdefault("Content-Security-Policy", policy)
        return response
