def open_case_for_failure(failure):
    raise NotImplementedError
