from exceptions.models.cases import CaseHistory, ExceptionCase
from exceptions.models.lanes import Lane, OwnershipRule
from exceptions.models.work import BulkAction, Notification

__all__ = [
    "BulkAction",
    "CaseHistory",
    "ExceptionCase",
    "Lane",
    "Notification",
    "OwnershipRule",
]
