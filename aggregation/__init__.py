"""Federated computation. `codec`, `zoo`, `strategies` and `privacy` import no Django: the site agent reuses them."""
