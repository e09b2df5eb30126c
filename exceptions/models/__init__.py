from exceptions.models.cases import CaseHistory, ExceptionCase
from exceptions.models.lanes import Lane, OwnershipRule

__all__ = ["CaseHistory", "ExceptionCase", "Lane", "OwnershipRule"]
