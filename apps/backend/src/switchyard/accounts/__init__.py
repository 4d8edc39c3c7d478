"""Teams: members, invitations, password reset and email verification, and the email they send."""
