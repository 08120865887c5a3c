from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from accounts import server_api, server_chat
from accounts import views as account_views
from monitoring import views as monitoring_views
from project import config_api, pages
from realtime.chat import api as chat_api
from realtime.chat import uploads
from realtime.node import admin_api
from realtime.push import api as push_api
from realtime.topics import api as topic_api

handler400 = "realtime.rest.errors.bad_request_view"
handler403 = "realtime.rest.errors.permission_denied"
handler404 = "realtime.rest.errors.not_found"
handler500 = "realtime.rest.errors.server_error"

api_patterns = [
    # Public, like the API it describes (realtime/rest/openapi.py).
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path(
        "docs/",
        SpectacularSwaggerSplitView.as_view(url_name="schema", template_name="api/docs.html"),
        name="api-docs",
    ),
    path("auth/register/", account_views.RegisterView.as_view(), name="register"),
    path("auth/token/", account_views.TokenView.as_view(), name="token"),
    path("auth/ws-ticket/", account_views.WsTicketView.as_view(), name="ws-ticket"),
    path("auth/tokens/", account_views.TokensView.as_view(), name="tokens"),
    path("auth/tokens/<int:token_id>/", account_views.TokenDetailView.as_view()),
    path("me/", account_views.MeView.as_view(), name="me"),
    path("users/", account_views.UserLookupView.as_view(), name="user-lookup"),
    path("conversations/", chat_api.ConversationsView.as_view()),
    path("conversations/<str:conversation_id>/", chat_api.ConversationDetailView.as_view()),
    path("conversations/<str:conversation_id>/members/", chat_api.MembersView.as_view()),
    path(
        "conversations/<str:conversation_id>/members/<int:user_id>/",
        chat_api.MemberDetailView.as_view(),
    ),
    path("conversations/<str:conversation_id>/messages/", chat_api.MessagesView.as_view()),
    path("conversations/<str:conversation_id>/attachments/", uploads.AttachmentsView.as_view()),
    path("attachments/<str:attachment_id>/", uploads.AttachmentDetailView.as_view()),
    path(
        "conversations/<str:conversation_id>/messages/<str:message_id>/",
        chat_api.MessageDetailView.as_view(),
    ),
    path(
        "conversations/<str:conversation_id>/messages/<str:message_id>/reactions/",
        chat_api.ReactionsView.as_view(),
    ),
    path("push/key/", push_api.PushKeyView.as_view()),
    path("push/subscriptions/", push_api.PushSubscriptionsView.as_view()),
    path("topics/<str:topic>/publish/", topic_api.PublishView.as_view()),
    path("topics/<str:topic>/history/", topic_api.HistoryView.as_view()),
    # The backend API (PROTOCOL 12): service tokens with scopes.
    path("server/users/<str:external_id>/", server_api.UserView.as_view()),
    path("server/users/<str:external_id>/disconnect/", server_api.DisconnectView.as_view()),
    path("server/conversations/", server_chat.ConversationsView.as_view()),
    path("server/conversations/<str:conversation_id>/members/", server_chat.MembersView.as_view()),
    path(
        "server/conversations/<str:conversation_id>/members/<int:user_id>/",
        server_chat.MemberDetailView.as_view(),
    ),
    path(
        "server/conversations/<str:conversation_id>/messages/",
        server_chat.MessagesView.as_view(),
    ),
    path("server/presence/", server_api.PresenceView.as_view()),
    path("server/publish/", server_api.PublishView.as_view()),
    path("stats/", admin_api.StatsView.as_view()),
    path("admin/config/", config_api.ConfigView.as_view()),
    path("admin/connections/", admin_api.ConnectionsView.as_view()),
    path("admin/connections/cleanup/", admin_api.CleanupView.as_view()),
    path("admin/connections/<str:connection_id>/", admin_api.ConnectionDetailView.as_view()),
]

urlpatterns = [
    path("", pages.home, name="home"),
    path("chat/", pages.chat, name="chat"),
    path("feeds/", pages.feeds, name="feeds"),
    path("sw.js", pages.service_worker, name="service-worker"),
    path("ops/", pages.ops, name="ops"),
    path("accounts/signup/", pages.signup, name="signup"),
    path("accounts/login/", pages.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path(
        "accounts/password/",
        auth_views.PasswordChangeView.as_view(success_url="/"),
        name="password_change",
    ),
    path("api/", include(api_patterns)),
    path("health/", monitoring_views.health, name="health"),
    path("ready/", monitoring_views.ready, name="ready"),
    # The admin's own login, answering 429 while the guard refuses (accounts/guard.py).
    path("admin/login/", pages.admin_login),
    path("admin/", admin.site.urls),
    path("metrics", monitoring_views.metrics, name="metrics"),
]
