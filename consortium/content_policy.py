"""Where a page needs more than the Content-Security-Policy in settings (CONTENT_SECURITY_POLICY), and why."""

from csp.constants import UNSAFE_INLINE
from csp.decorators import csp_update

# plotly.js (the live dashboard) and Swagger UI write style elements and style attributes as they draw, so
# those pages alone allow inline styles; every other page, the admin included, takes styles from files only.
# Scripts stay 'self' everywhere: no page needs an inline script or eval.
allow_inline_styles = csp_update({"style-src": [UNSAFE_INLINE]})
