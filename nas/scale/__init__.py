"""Compound scaling's two steps (survey 000 ch. 3 sec. 2-6): coefficients at phi = 1, then the family."""

from nas.scale.coefficients import coefficients_of, search_coefficients
from nas.scale.family import BY, FAMILIES, Coster, Member, comparison, largest_phi, scale_family

__all__ = ["BY", "FAMILIES", "Coster", "Member", "coefficients_of", "comparison", "largest_phi",
           "scale_family", "search_coefficients"]
