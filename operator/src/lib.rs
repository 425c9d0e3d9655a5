//! oauth3 operator: controllers for Permits and Executions (see the operator issue).
